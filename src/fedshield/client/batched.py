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

Each client draws its batches with its own generator, by the same :func:`batch_indices` calls as
:func:`~fedshield.task.training.local_train`, and sees only its own samples (a chunk's batches
of every step are one index into the call's pooled client samples); clients are chunked
by their effective batch size ``min(batch_size, n_i)`` so that no padding is needed. The result
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

# Stacked weights per chunk: ~2 MiB of parameters stays in this machine's L2/L3 with the
# gradients and activations; bench/bench_batched.py --sweep measures the chunk sizes around it.
CHUNK_PARAM_BYTES = 2 * 2**20
MAX_CHUNK = 256


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

    Requests are grouped by effective batch size and trained ``chunk_size`` at a time.
    """
    if not requests:  # every job of the round has an active attacker: all go client by client
        return []
    training = experiment.training
    by_batch: dict[int, list[int]] = {}
    for position, request in enumerate(requests):
        effective = min(training.batch_size, experiment.num_examples(request.user_id))
        if effective == 0:
            raise ValueError("a client with no samples cannot train")
        by_batch.setdefault(effective, []).append(position)
    pool = _ClientPool(experiment, [request.user_id for request in requests])
    replies: list[ClientReply | None] = [None] * len(requests)
    for positions in by_batch.values():
        for start in range(0, len(positions), chunk_size):
            chunk = positions[start : start + chunk_size]
            for position, reply in zip(
                chunk, _train_chunk(experiment, pool, [requests[p] for p in chunk], stack), strict=True
            ):
                replies[position] = reply
    return [reply for reply in replies if reply is not None]


class _ClientPool:
    """The samples of a call's clients in one ``(rows, D)`` tensor, so that a chunk's batches of
    every step are one index operation (instead of one gather and one stack per client)."""

    def __init__(self, experiment: Experiment, user_ids: Sequence[int]) -> None:
        unique = list(dict.fromkeys(user_ids))
        tensors = [experiment.client_tensors(uid) for uid in unique]
        self.x = torch.cat([x.reshape(len(y), -1) for x, y in tensors])
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
        per_client = []
        for request in requests:
            first, count = self.rows[request.user_id]
            seed = derive_seed("client", request.job.seed, request.server_round, request.user_id)
            steps = batch_indices(
                count, batch_size=config.batch_size, num_batches=config.local_steps, generator=torch_generator(seed)
            )
            per_client.append(torch.stack(steps) + first)
        index = torch.stack(per_client, dim=1).to(self.x.device)
        return self.x[index], self.y[index]


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
    fused = config.momentum == 0 and config.weight_decay == 0
    params = [t for pair in zip(weights, biases, strict=True) for t in pair if t is not None]
    buffers: list[torch.Tensor | None] = [None] * len(params)
    total_loss = torch.zeros(len(requests), dtype=torch.float64, device=flat.device)
    for step in range(config.local_steps):
        if fused:
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


def _plain_sgd_step(
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    x: torch.Tensor,
    y: torch.Tensor,
    learning_rate: float,
) -> torch.Tensor:
    """One step of plain SGD (no momentum, no weight decay) in place; the per-client losses ``(C,)``.

    ``W_l -= lr g_l^T h_{l-1}`` is one ``baddbmm_`` (no gradient tensor, no separate update
    pass over the weights), after ``g_{l-1}`` has been computed from the old ``W_l``.
    """
    inputs, logits = _forward(weights, biases, x)
    log_probs = torch.log_softmax(logits, dim=2)
    losses = -log_probs.gather(2, y.unsqueeze(2)).squeeze(2).mean(dim=1)
    batch = logits.shape[1]
    g = log_probs.exp_()
    g.scatter_add_(2, y.unsqueeze(2), torch.full_like(y, -1, dtype=g.dtype).unsqueeze(2))
    g /= batch
    for layer in range(len(weights) - 1, -1, -1):
        below = torch.bmm(g, weights[layer]).mul_(inputs[layer] > 0) if layer > 0 else None
        bias = biases[layer]
        if bias is not None:
            bias.sub_(g.sum(dim=1), alpha=learning_rate)
        weights[layer].baddbmm_(g.transpose(1, 2), inputs[layer], alpha=-learning_rate)
        if below is not None:
            g = below
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
