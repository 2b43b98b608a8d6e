"""Many honest clients' local SGD at once, over stacked per-client weights (``engine.batch_clients``).

For a model whose forward is ``Flatten`` then Linear layers with ReLU between them
(:class:`~fedshield.models.LogisticRegression`, :class:`~fedshield.models.MLP`), a chunk of C
clients trains as one computation: the weights of layer l are a ``(C, out, in)`` stack, the
forward pass is ``z_l = h_{l-1} W_l^T + b_l`` by ``baddbmm``, and the backward pass of the mean
cross-entropy over a batch of B samples is written out by hand:

    g_L = (softmax(z_L) - onehot(y)) / B,   dW_l = g_l^T h_{l-1},   db_l = sum_b g_l,
    g_{l-1} = (g_l W_l) * [z_{l-1} > 0].

The SGD step is ``torch.optim.SGD``'s (dampening 0, no Nesterov): ``d = grad + wd * p``;
``buf = d`` at the first step, else ``buf = momentum * buf + d``; ``p -= lr * buf``. Plain SGD
(momentum 0, no weight decay, the default) fuses gradient and step: ``W_l -= lr g_l^T h_{l-1}``
is one in-place ``baddbmm_``, so the weight gradient is never written out (1.3-1.6x faster
here at n = 1,000 clients, bench/README.md).

With plain SGD, a client whose samples are few (the paper's FLCert setting: about 8 per client)
keeps its first layer in factored form, ``W_t = W_0 - lr A_t^T X`` over its own samples ``X``
(:func:`_train_chunk_deferred`): its pre-activations come from ``X W_0^T`` and the Gram matrix
``X X^T``, computed once per round, so no weight matrix is read or written per step; the reply
carries the first layer's update ``-lr A^T X`` as its two factors
(:class:`~fedshield.task.updates.FactoredUpdate`), which screening bounds and FedAvg averages
without multiplying out each client's. :func:`defers_first_layer` takes that path where it
counts fewer multiply-adds than the direct one (bench/README.md: at n = 1,000 the run takes half
the time of the direct batched path).

Each client draws its batches with its own generator, by the same :func:`batch_indices` calls as
:func:`~fedshield.task.training.local_train`, and sees only its own samples (a chunk's batches
of every step are one index into the call's pooled client samples); clients are chunked
by their effective batch size ``min(batch_size, n_i)`` so that no padding is needed (the deferred
path pads instead, with exact zeros, to mix client sizes in a chunk). The result
equals the per-client path up to float reassociation (the tolerance is stated and tested in
tests/test_batched_clients.py). The chunk composition is a pure function of the round's
requests and the chunk size a pure function of the model, so a batched run is bit-identical to
itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedshield.experiment import Experiment
from fedshield.models import MLP, LogisticRegression
from fedshield.task.determinism import derive_seed, torch_generator
from fedshield.task.messages import ClientReply, TrainRequest
from fedshield.task.training import LocalTrainingConfig, batch_indices
from fedshield.task.updates import FactoredUpdate

# Stacked weights per chunk: ~2 MiB of parameters stays in this machine's L2/L3 with the
# gradients and activations; bench/bench_batched.py --sweep measures the chunk sizes around it.
CHUNK_PARAM_BYTES = 2 * 2**20
MAX_CHUNK = 256
# Clients per deferred chunk: its per-step tensors are small (m x out per client), so the chunk
# only amortizes per-call overhead; flat from 32 to 128 in bench_batched.py --sweep.
DEFERRED_CHUNK = 64


@dataclass(frozen=True)
class LinearStack:
    """The shapes of a Flatten - Linear - (ReLU - Linear)* model, in ``state_dict`` order."""

    layers: tuple[tuple[int, int, bool], ...]  # (out_features, in_features, has_bias)

    @property
    def num_params(self) -> int:
        return sum(out * inp + (out if bias else 0) for out, inp, bias in self.layers)


def linear_stack(model: nn.Module) -> LinearStack | None:
    """The model's layer shapes if batched training supports it (logistic regression, MLP), else None."""
    if isinstance(model, LogisticRegression):
        linears = [model.linear]
    elif isinstance(model, MLP):
        modules = list(model.net)
        if not isinstance(modules[0], nn.Flatten):
            return None
        linears = [m for m in modules if isinstance(m, nn.Linear)]
        expected = [nn.Flatten] + [cls for _ in linears[:-1] for cls in (nn.Linear, nn.ReLU)] + [nn.Linear]
        if [type(m) for m in modules] != expected:
            return None
    else:
        return None
    return LinearStack(tuple((m.out_features, m.in_features, m.bias is not None) for m in linears))


def chunk_size_for(stack: LinearStack, dtype: torch.dtype) -> int:
    """Clients per chunk: as many as fit :data:`CHUNK_PARAM_BYTES` of stacked parameters (>= 1)."""
    per_client = stack.num_params * torch.tensor([], dtype=dtype).element_size()
    return max(1, min(MAX_CHUNK, CHUNK_PARAM_BYTES // per_client))


def train_clients_batched(
    experiment: Experiment, requests: Sequence[TrainRequest], stack: LinearStack, *, chunk_size: int
) -> list[ClientReply]:
    """Honest local training of every request (plain SGD, no attack, no hardening), in order.

    Clients that :func:`defers_first_layer` picks train :data:`DEFERRED_CHUNK` at a time in order
    of sample count (:func:`_train_chunk_deferred`, padded to the chunk's largest client); the
    others are grouped by effective batch size and train ``chunk_size`` at a time
    (:func:`_train_chunk`).
    """
    if not requests:  # every job of the round has an active attacker: all go client by client
        return []
    training = experiment.training
    deferred: list[tuple[int, int]] = []  # (sample count, position)
    direct: dict[int, list[int]] = {}  # effective batch size -> positions
    for position, request in enumerate(requests):
        count = experiment.num_examples(request.user_id)
        if count == 0:
            raise ValueError("a client with no samples cannot train")
        effective = min(training.batch_size, count)
        if training.plain_sgd and defers_first_layer(
            stack, local_steps=training.local_steps, batch=effective, count=count
        ):
            deferred.append((count, position))
        else:
            direct.setdefault(effective, []).append(position)
    pool = _ClientPool(experiment, [request.user_id for request in requests])
    replies: list[ClientReply | None] = [None] * len(requests)

    def keep(chunk: list[int], trained: list[ClientReply]) -> None:
        for position, reply in zip(chunk, trained, strict=True):
            replies[position] = reply

    for positions in direct.values():
        for i in range(0, len(positions), chunk_size):
            chunk = positions[i : i + chunk_size]
            keep(chunk, _train_chunk(experiment, pool, [requests[p] for p in chunk], stack))
    projected = _FirstLayerOutputs(experiment, pool, requests, sorted(p for _, p in deferred), stack)
    by_count = [position for _, position in sorted(deferred)]
    for i in range(0, len(by_count), DEFERRED_CHUNK):
        chunk = by_count[i : i + DEFERRED_CHUNK]
        trained = _train_chunk_deferred(
            experiment, pool, [requests[p] for p in chunk], stack, positions=chunk, projected=projected
        )
        keep(chunk, trained)
    return [reply for reply in replies if reply is not None]


def defers_first_layer(stack: LinearStack, *, local_steps: int, batch: int, count: int) -> bool:
    """Whether :func:`_train_chunk_deferred` does fewer multiply-adds than the direct path for a
    client of ``count`` samples: first layer ``(out, D)``, ``local_steps`` batches of ``batch``.

    Direct: a forward and a weight update per step, ``2 s B out D``. Deferred: ``X W_0^T`` and
    the final ``A^T X`` (``2 m out D``), the Gram matrix (``m^2 D``) and each step's correction
    (``2 s B m out``). With a handful of samples per client (the paper's FLCert setting) the
    deferred path does a fraction of the work, in larger matrix products.
    """
    out, inp, _ = stack.layers[0]
    direct = 2 * local_steps * batch * out * inp
    deferred = 2 * count * out * inp + count * count * inp + 2 * local_steps * batch * count * out
    return deferred < direct


class _ClientPool:
    """The samples of a call's clients in one ``(rows, D)`` tensor, so that a chunk's batches of
    every step are one index operation (instead of one gather and one stack per client)."""

    def __init__(self, experiment: Experiment, user_ids: Sequence[int]) -> None:
        unique = list(dict.fromkeys(user_ids))
        tensors = [experiment.client_tensors(uid) for uid in unique]
        flat = [x.reshape(len(y), -1) for x, y in tensors]
        # One zero row after the samples (row ``zero_row``): the padding of a deferred chunk.
        self.x = torch.cat([*flat, torch.zeros_like(flat[0][:1])])
        self.zero_row = len(self.x) - 1
        self.y = torch.cat([y for _, y in tensors])
        self.rows: dict[int, tuple[int, int]] = {}  # user ID -> (first row, number of rows)
        first = 0
        for uid, (_, y) in zip(unique, tensors, strict=True):
            self.rows[uid] = (first, len(y))
            first += len(y)

    def batches(
        self, requests: Sequence[TrainRequest], config: LocalTrainingConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(steps, C, B, D)`` inputs and ``(steps, C, B)`` labels: for each client the batches
        ``local_train`` draws (same generator, same :func:`batch_indices` calls), from its own rows."""
        index = self.step_rows(requests, config)
        return self.x[index], self.y[index]

    def step_rows(self, requests: Sequence[TrainRequest], config: LocalTrainingConfig) -> torch.Tensor:
        """``(steps, C, B)`` pooled rows of each client's batches (see :meth:`batches`); every
        client's batch must have the same size B."""
        return torch.stack(
            [first + torch.stack(batches) for first, batches in self._local_batches(requests, config)], dim=1
        ).to(self.x.device)

    def padded_local_batches(
        self, requests: Sequence[TrainRequest], config: LocalTrainingConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each client's batches as rows of its own samples (0 .. n_i - 1), ``(steps, C, B)`` with
        B the largest batch, padded with row 0; and the ``(C, B)`` mask of real entries."""
        per_client = [torch.stack(batches) for _, batches in self._local_batches(requests, config)]
        width = max(batches.shape[1] for batches in per_client)
        local = torch.zeros(config.local_steps, len(requests), width, dtype=torch.long)
        valid = torch.zeros(len(requests), width, dtype=torch.bool)
        for column, batches in enumerate(per_client):
            local[:, column, : batches.shape[1]] = batches
            valid[column, : batches.shape[1]] = True
        return local.to(self.x.device), valid.to(self.x.device)

    def _local_batches(
        self, requests: Sequence[TrainRequest], config: LocalTrainingConfig
    ) -> list[tuple[int, list[torch.Tensor]]]:
        """Per client, its first pooled row and the batches ``local_train`` draws (same generator,
        same :func:`batch_indices` calls) as rows of its own samples."""
        drawn = []
        for request in requests:
            first, count = self.rows[request.user_id]
            seed = derive_seed("client", request.job.seed, request.server_round, request.user_id)
            batches = batch_indices(
                count, batch_size=config.batch_size, num_batches=config.local_steps, generator=torch_generator(seed)
            )
            drawn.append((first, batches))
        return drawn


class _FirstLayerOutputs:
    """``U = X W_0^T`` of every deferred request (its samples through its job's starting first
    layer), one product per run of consecutive requests that share a starting model (a job's
    clients), so each job's first weight matrix is read once per round. Rows of request i are
    ``offsets[i] .. offsets[i] + n_i - 1``; the last row is zero (padding)."""

    def __init__(
        self,
        experiment: Experiment,
        pool: _ClientPool,
        requests: Sequence[TrainRequest],
        positions: Sequence[int],
        stack: LinearStack,
    ) -> None:
        out, inp, _ = stack.layers[0]
        device, dtype = experiment.device, experiment.dtype
        sizes = [pool.rows[requests[p].user_id][1] for p in positions]
        self.rows = torch.zeros(sum(sizes) + 1, out, device=device, dtype=dtype)
        self.zero_row = len(self.rows) - 1
        self.offsets: dict[int, int] = {}
        offset, i = 0, 0
        while i < len(positions):
            start_params = requests[positions[i]].global_params
            run = [positions[i]]
            while i + len(run) < len(positions) and requests[positions[i + len(run)]].global_params is start_params:
                run.append(positions[i + len(run)])
            ranges = [pool.rows[requests[p].user_id] for p in run]
            contiguous = all(a[0] + a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            x = (
                pool.x[ranges[0][0] : ranges[-1][0] + ranges[-1][1]]
                if contiguous
                else torch.cat([pool.x[first : first + count] for first, count in ranges])
            )
            weight = start_params[: out * inp].view(out, inp).to(device=device, dtype=dtype)
            torch.mm(x.to(device=device, dtype=dtype), weight.t(), out=self.rows[offset : offset + len(x)])
            for p, (_, count) in zip(run, ranges, strict=True):
                self.offsets[p] = offset
                offset += count
            i += len(run)


def _train_chunk(
    experiment: Experiment, pool: _ClientPool, requests: list[TrainRequest], stack: LinearStack
) -> list[ClientReply]:
    config = experiment.training
    xs, ys = pool.batches(requests, config)
    # One (C, P) copy of the clients' starting parameters, trained in place through per-layer
    # views; the trained block minus each client's start is then its update (no other copy).
    flat = torch.stack([request.global_params for request in requests]).to(
        device=experiment.device, dtype=experiment.dtype
    )
    weights, biases = _layer_views(flat, stack)
    params = [t for pair in zip(weights, biases, strict=True) for t in pair if t is not None]
    buffers: list[torch.Tensor | None] = [None] * len(params)
    total_loss = torch.zeros(len(requests), dtype=torch.float64, device=flat.device)
    for step in range(config.local_steps):
        if config.plain_sgd:
            step_losses = _plain_sgd_step(weights, biases, xs[step], ys[step], config.learning_rate)
        else:
            step_losses, grads = _loss_and_grads(weights, biases, xs[step], ys[step])
            for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
                _sgd_step(param, grad, buffers, i, config)
        total_loss += step_losses
    updates = flat.to(requests[0].global_params.device)
    for row, request in zip(updates, requests, strict=True):
        row.sub_(request.global_params)
    losses = (total_loss / config.local_steps).tolist()
    return [ClientReply(updates[i], pool.rows[r.user_id][1], losses[i]) for i, r in enumerate(requests)]


def _train_chunk_deferred(
    experiment: Experiment,
    pool: _ClientPool,
    requests: list[TrainRequest],
    stack: LinearStack,
    *,
    positions: Sequence[int],
    projected: _FirstLayerOutputs,
) -> list[ClientReply]:
    """Plain SGD for a chunk of clients, the first layer kept in factored form.

    With plain SGD a client's first-layer weights after t steps are its start minus a sum of
    rank-B updates on its own samples ``X`` (``m x D``):

        W_t = W_0 - lr A_t^T X,    A_t = sum_{s<t} scatter(I_s, g_s)    (m x out),

    where ``I_s`` are step s's batch rows and ``g_s`` the gradient at the first layer's output.
    So step t's pre-activations are ``X[I_t] W_t^T = U[I_t] - lr G[I_t] A_t`` with ``U = X W_0^T``
    and the Gram matrix ``G = X X^T``, both computed once, and the client's first-layer update
    is ``-lr A_T^T X``, returned as its factors (a :class:`FactoredUpdate`): one product of ``m``
    rows instead of ``2 x local_steps`` of ``B`` rows, and no weight matrix read or written.
    Later layers (and all biases) train in place as in :func:`_plain_sgd_step`. Clients of
    different sizes share a chunk: ``X`` is padded with zero rows (never indexed, so ``A`` stays
    0 there) and batches smaller than the chunk's largest with masked entries (zero gradient;
    each client's loss and gradient are divided by its own batch size). Equal to the per-client
    path up to float reassociation.
    """
    config = experiment.training
    lr = config.learning_rate
    device, dtype = experiment.device, experiment.dtype
    counts = [pool.rows[r.user_id][1] for r in requests]
    num_clients, width = len(requests), max(counts)
    local, valid = pool.padded_local_batches(requests, config)  # (steps, C, B), (C, B)
    batch = local.shape[2]
    batch_sizes = valid.sum(dim=1, keepdim=True).to(dtype)  # (C, 1)
    weight = (valid / batch_sizes).unsqueeze(2)  # (C, B, 1): 1 / B_i on real entries, else 0
    out, inp, has_bias = stack.layers[0]
    first_size = out * inp
    # Each client's samples and their first-layer outputs U, padded with the zero rows.
    column = torch.arange(width)
    inside = column[None, :] < torch.tensor(counts)[:, None]
    firsts = torch.tensor([pool.rows[r.user_id][0] for r in requests])[:, None]
    offsets = torch.tensor([projected.offsets[p] for p in positions])[:, None]
    sample_rows = torch.where(inside, firsts + column, pool.zero_row)
    output_rows = torch.where(inside, offsets + column, projected.zero_row)
    x = pool.x[sample_rows.to(pool.x.device)].to(device=device, dtype=dtype)  # (C, m, D)
    labels = pool.y[local + firsts[None].to(local.device)].to(device)  # (steps, C, B)
    projected_rows = projected.rows[output_rows.to(device)]  # (C, m, out)
    gram = torch.bmm(x, x.transpose(1, 2))  # (C, m, m)
    accumulated = torch.zeros(num_clients, width, out, device=device, dtype=dtype)

    # Everything but the first weight matrix trains in place on one (C, P - out D) copy.
    initial_rest = torch.stack([r.global_params[first_size:] for r in requests]).to(device=device, dtype=dtype)
    rest = initial_rest.clone()
    first_bias = rest[:, :out] if has_bias else None
    later_weights, later_biases = _layer_views(rest[:, out if has_bias else 0 :], LinearStack(stack.layers[1:]))

    total_loss = torch.zeros(num_clients, dtype=torch.float64, device=device)
    for step in range(config.local_steps):
        index = local[step]  # (C, B)
        z = projected_rows.gather(1, index.unsqueeze(2).expand(num_clients, batch, out))
        if step > 0:
            gram_rows = gram.gather(1, index.unsqueeze(2).expand(num_clients, batch, width))
            z.baddbmm_(gram_rows, accumulated, alpha=-lr)
        if first_bias is not None:
            z += first_bias.unsqueeze(1)
        if later_weights:
            inputs, logits = _forward(later_weights, later_biases, torch.relu(z))
        else:
            inputs, logits = [], z
        step_losses, g = _loss_and_output_gradient(logits, labels[step], weight=weight)
        total_loss += step_losses
        g = _backward_plain_sgd(later_weights, later_biases, inputs, g, lr, below_first=True)
        if first_bias is not None:
            first_bias.sub_(g.sum(dim=1), alpha=lr)
        accumulated.scatter_add_(1, index.unsqueeze(2).expand(num_clients, batch, out), g)

    # The first layer's update -lr A^T X stays factored (FactoredUpdate): FedAvg averages the
    # factors of a job's clients in one product, and nothing writes C x out x D floats.
    left = accumulated.mul_(-lr).transpose(1, 2).contiguous()  # (C, out, m)
    tails = rest.sub_(initial_rest)
    server = requests[0].global_params.device
    if server != left.device:
        left, x, tails = left.to(server), x.to(server), tails.to(server)
    losses = (total_loss / config.local_steps).tolist()
    return [
        ClientReply(FactoredUpdate(left[i, :, :count], x[i, :count], tails[i]), count, losses[i])
        for i, count in enumerate(counts)
    ]


def _loss_and_output_gradient(
    logits: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-client mean cross-entropy ``(C,)`` and its gradient at the logits, ``(softmax - onehot) / B``
    (loss and gradient share one ``log_softmax``). With ``weight`` ``(C, B, 1)``, entry b of client
    c counts ``weight[c, b]`` instead of ``1 / B`` (``1 / B_c`` on a padded chunk's real entries,
    0 on its padding)."""
    log_probs = torch.log_softmax(logits, dim=2)
    picked = log_probs.gather(2, y.unsqueeze(2))
    losses = -picked.squeeze(2).mean(dim=1) if weight is None else -(picked * weight).sum(dim=(1, 2))
    g = log_probs.exp_()
    g.scatter_add_(2, y.unsqueeze(2), torch.full_like(y, -1, dtype=g.dtype).unsqueeze(2))
    if weight is None:
        g /= logits.shape[1]
    else:
        g *= weight
    return losses, g


def _backward_plain_sgd(
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    inputs: list[torch.Tensor],
    g: torch.Tensor,
    learning_rate: float,
    *,
    below_first: bool,
) -> torch.Tensor:
    """Plain-SGD steps, in place, of the layers ``inputs[l] -> z_l`` from the output down; ``g`` is
    the gradient at the output. Returns the gradient at the lowest layer's input (through the
    ReLU that made it) if ``below_first``, else ``g`` at the lowest layer's output.

    ``W_l -= lr g_l^T h_{l-1}`` is one ``baddbmm_`` (no gradient tensor, no separate update
    pass over the weights), after ``g_{l-1} = (g_l W_l) * [h_{l-1} > 0]`` has been computed
    from the old ``W_l``.
    """
    for layer in range(len(weights) - 1, -1, -1):
        below = torch.bmm(g, weights[layer]).mul_(inputs[layer] > 0) if layer > 0 or below_first else None
        bias = biases[layer]
        if bias is not None:
            bias.sub_(g.sum(dim=1), alpha=learning_rate)
        weights[layer].baddbmm_(g.transpose(1, 2), inputs[layer], alpha=-learning_rate)
        if below is not None:
            g = below
    return g


def _plain_sgd_step(
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    x: torch.Tensor,
    y: torch.Tensor,
    learning_rate: float,
) -> torch.Tensor:
    """One step of plain SGD (no momentum, no weight decay) in place; the per-client losses ``(C,)``."""
    inputs, logits = _forward(weights, biases, x)
    losses, g = _loss_and_output_gradient(logits, y)
    _backward_plain_sgd(weights, biases, inputs, g, learning_rate, below_first=False)
    return losses


def _forward(
    weights: list[torch.Tensor], biases: list[torch.Tensor | None], x: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The inputs ``h_0 .. h_{L-1}`` of the layers and the logits ``z_L``."""
    inputs = [x]
    for layer, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        z = (
            torch.baddbmm(bias.unsqueeze(1), inputs[-1], weight.transpose(1, 2))
            if bias is not None
            else torch.bmm(inputs[-1], weight.transpose(1, 2))
        )
        if layer == len(weights) - 1:
            return inputs, z
        inputs.append(torch.relu(z))
    raise ValueError("a linear stack has at least one layer")


def _layer_views(flat: torch.Tensor, stack: LinearStack) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """``(C, P)`` flat parameters -> per-layer ``(C, out, in)`` weights and ``(C, out)`` biases (views)."""
    weights: list[torch.Tensor] = []
    biases: list[torch.Tensor | None] = []
    offset = 0
    for out, inp, has_bias in stack.layers:
        weights.append(flat[:, offset : offset + out * inp].view(-1, out, inp))
        offset += out * inp
        biases.append(flat[:, offset : offset + out] if has_bias else None)
        offset += out if has_bias else 0
    if offset != flat.shape[1]:
        raise ValueError(f"parameter vector must have {offset} entries; got {flat.shape[1]}")
    return weights, biases


def _loss_and_grads(
    weights: list[torch.Tensor], biases: list[torch.Tensor | None], x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-client mean cross-entropy ``(C,)`` and the gradients, in ``state_dict`` order."""
    inputs, logits = _forward(weights, biases, x)
    num_clients, batch, num_classes = logits.shape
    losses = F.cross_entropy(logits.reshape(-1, num_classes), y.reshape(-1), reduction="none")
    losses = losses.reshape(num_clients, batch).mean(dim=1)
    g = torch.softmax(logits, dim=2)
    g.scatter_add_(2, y.unsqueeze(2), torch.full_like(y, -1, dtype=g.dtype).unsqueeze(2))
    g /= batch
    grads: list[torch.Tensor] = []
    for layer in range(len(weights) - 1, -1, -1):
        if biases[layer] is not None:
            grads.append(g.sum(dim=1))
        grads.append(torch.bmm(g.transpose(1, 2), inputs[layer]))
        if layer > 0:  # relu(z) > 0 exactly where z > 0
            g = torch.bmm(g, weights[layer]) * (inputs[layer] > 0)
    grads.reverse()  # built backwards as (bias, weight) pairs: reversed is (weight, bias) order
    return losses, grads


def _sgd_step(
    param: torch.Tensor, grad: torch.Tensor, buffers: list[torch.Tensor | None], i: int, config: LocalTrainingConfig
) -> None:
    """``torch.optim.SGD``'s update of one stacked parameter (see the module docstring)."""
    if config.weight_decay != 0:
        grad = grad.add(param, alpha=config.weight_decay)
    if config.momentum != 0:
        buffer = buffers[i]
        if buffer is None:
            buffer = buffers[i] = grad.clone()
        else:
            buffer.mul_(config.momentum).add_(grad)
        grad = buffer
    param.add_(grad, alpha=-config.learning_rate)
