"""Batched plain SGD with the first layer in factored form (``_train_chunk_deferred``, issue #16).

With plain SGD, a client's first-layer weights stay ``W_0 - lr A^T X`` over its own samples X,
so its pre-activations come from ``X W_0^T`` and the Gram matrix ``X X^T``; clients of different
sizes share a chunk through zero padding and masked batch entries. It must give each client the
update and loss of the per-client path up to float reassociation (the tolerance stated in
tests/test_batched_clients.py), whatever else is in its chunk.
"""

from __future__ import annotations

import pytest
import torch

from fedshield.client import batched
from fedshield.client.batched import LinearStack, defers_first_layer, linear_stack, train_clients_batched
from fedshield.client.work import train_step
from fedshield.config.build import build_experiment
from fedshield.engines.local import InProcessTransport, new_transport
from fedshield.server.protocol import run_jobs, start_jobs, train_requests
from fedshield.task.determinism import configure_torch
from fedshield.task.updates import FactoredUpdate, dense_update
from helpers import tiny_config

# Uneven clients of 1 to 37 samples around the batch of 8 (5 steps): batches smaller than the
# chunk's largest are masked, and the largest clients take the direct path.
SMALL_CLIENTS = [
    "num_clients=300",
    "partition=dirichlet",
    "partition.alpha=0.5",
    "client.batch_size=8",
    "client.local_steps=5",
    "sample_fraction=1.0",
]
MODELS = {
    "logistic": ["model=logistic"],
    "mlp": ["model=mlp", "model.hidden=[128]"],
    "mlp-two-hidden": ["model=mlp", "model.hidden=[32,16]"],
}
RELATIVE_ERROR = {"logistic": 1e-5, "mlp": 1e-3, "mlp-two-hidden": 1e-3}


def _relative_error(reference: torch.Tensor | FactoredUpdate, other: torch.Tensor | FactoredUpdate) -> float:
    reference, other = dense_update(reference), dense_update(other)
    return float((reference - other).norm() / reference.norm())


def _round_one(tmp_path, *overrides: str):
    configure_torch(threads=1)
    experiment = build_experiment(tiny_config(tmp_path, *SMALL_CLIENTS, *overrides))
    (state,) = start_jobs(experiment, experiment.jobs[:1])
    requests = train_requests([state], {state.job.job_id: tuple(state.job.client_ids)}, 1)
    stack = linear_stack(experiment.new_model())
    assert stack is not None
    return experiment, requests, stack


def _deferred_user_ids(monkeypatch) -> list[int]:
    """Record the user IDs that train on the deferred path."""
    seen: list[int] = []
    original = batched._train_chunk_deferred

    def spy(experiment, pool, requests, stack, **kwargs):
        seen.extend(request.user_id for request in requests)
        return original(experiment, pool, requests, stack, **kwargs)

    monkeypatch.setattr(batched, "_train_chunk_deferred", spy)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_deferred_clients_get_the_per_client_update_and_loss(tmp_path, monkeypatch, model):
    # Prepare
    experiment, requests, stack = _round_one(tmp_path, *MODELS[model])
    deferred = _deferred_user_ids(monkeypatch)

    # Execute
    replies = train_clients_batched(experiment, requests, stack, chunk_size=4)

    # Assert: both paths ran, the deferred one on clients smaller and larger than the batch.
    sizes = {r.user_id: experiment.num_examples(r.user_id) for r in requests}
    assert deferred and len(deferred) < len(requests)
    assert min(sizes[uid] for uid in deferred) < 8 < max(sizes[uid] for uid in deferred)
    for request, reply in zip(requests, replies, strict=True):
        reference, _ = train_step(experiment, request)
        assert reply.num_examples == reference.num_examples
        assert _relative_error(reference.update, reply.update) < RELATIVE_ERROR[model], request.user_id
        assert reply.loss == pytest.approx(reference.loss, rel=1e-5)


@pytest.mark.slow
def test_a_deferred_client_trains_the_same_alone_as_in_a_padded_chunk(tmp_path, monkeypatch):
    # Prepare: the MLP; each client once alone, once among 299 clients of other sizes.
    experiment, requests, stack = _round_one(tmp_path, *MODELS["mlp"])
    deferred = _deferred_user_ids(monkeypatch)

    # Execute
    together = train_clients_batched(experiment, requests, stack, chunk_size=4)
    alone = [train_clients_batched(experiment, [request], stack, chunk_size=4)[0] for request in requests[:40]]
    again = train_clients_batched(experiment, requests, stack, chunk_size=4)

    # Assert: padding rows and masked entries add exact zeros; a run repeats bit for bit.
    assert set(deferred) >= {r.user_id for r in requests[:40] if experiment.num_examples(r.user_id) <= 20}
    for one, other in zip(alone, together[:40], strict=True):
        assert _relative_error(one.update, other.update) < 1e-6
        assert one.loss == pytest.approx(other.loss, rel=1e-6)
    for first, second in zip(together, again, strict=True):
        assert torch.equal(dense_update(first.update), dense_update(second.update)) and first.loss == second.loss


@pytest.mark.slow
def test_momentum_keeps_every_client_on_the_direct_path(tmp_path, monkeypatch):
    experiment, requests, stack = _round_one(tmp_path, *MODELS["mlp"], "client.momentum=0.9")
    deferred = _deferred_user_ids(monkeypatch)

    replies = train_clients_batched(experiment, requests[:20], stack, chunk_size=4)

    assert deferred == [] and len(replies) == 20


def test_the_first_layer_is_deferred_exactly_where_it_does_less_work():
    # MLP 784-128-10, 5 steps of batch 8: direct 2*5*8*128*784 multiply-adds; deferred
    # 2*m*128*784 + m^2*784 + 2*5*8*m*128, fewer iff m^2 + 269.06 m < 10240, i.e. m <= 33.
    mlp = LinearStack(((128, 784, True), (10, 128, True)))
    chosen = [m for m in range(1, 200) if defers_first_layer(mlp, local_steps=5, batch=min(8, m), count=m)]
    assert chosen == list(range(1, 34))
    # Never when the client has at least as many samples as the round draws (no repeats to share).
    for m in range(40, 400):
        assert not defers_first_layer(mlp, local_steps=5, batch=8, count=m)
    # Logistic regression 784-10: m^2 + 21.02 m < 800, i.e. m <= 19.
    logistic = LinearStack(((10, 784, True),))
    assert [m for m in range(1, 100) if defers_first_layer(logistic, local_steps=5, batch=min(8, m), count=m)] == list(
        range(1, 20)
    )


@pytest.mark.slow
def test_groups_of_small_clients_match_the_per_client_path_and_repeat_bit_for_bit(tmp_path):
    # Prepare: 3 FLCert-D groups of about 100 clients of 1 to 37 samples, 3 rounds, the MLP:
    # factored updates through screening and FedAvg, as at paper scale.
    configure_torch(threads=1)
    cfg = tiny_config(
        tmp_path, *SMALL_CLIENTS, *MODELS["mlp"], "ensemble=flcert_d", "ensemble.num_groups=3", "num_rounds=3"
    )
    experiment = build_experiment(cfg)

    # Execute
    per_client = run_jobs(experiment, list(experiment.jobs), InProcessTransport(experiment))
    batched = run_jobs(experiment, list(experiment.jobs), new_transport(experiment, "auto"))
    again = run_jobs(experiment, list(experiment.jobs), new_transport(experiment, "auto"))

    # Assert: within the stated tolerance of the per-client path, and bit-identical to itself.
    for reference, other, repeat in zip(per_client, batched, again, strict=True):
        assert _relative_error(reference.params, other.params) < RELATIVE_ERROR["mlp"]
        assert reference.predictions is not None and other.predictions is not None
        assert float((reference.predictions == other.predictions).float().mean()) >= 0.995
        assert [r["rejected"] for r in other.history] == [0, 0, 0]
        assert torch.equal(other.params, repeat.params) and torch.equal(other.predictions, repeat.predictions)


@pytest.mark.slow
def test_flcert_p_groups_sharing_clients_each_train_from_their_own_model(tmp_path, monkeypatch):
    # Prepare: FLCert-P, 8 groups of 40 of the 300 small clients: most clients are in several
    # groups of the same round, each with that group's model.
    configure_torch(threads=1)
    cfg = tiny_config(
        tmp_path,
        *SMALL_CLIENTS,
        *MODELS["mlp"],
        "ensemble=flcert_p",
        "ensemble.num_groups=8",
        "ensemble.group_size=40",
        "num_rounds=2",
    )
    experiment = build_experiment(cfg)
    memberships = [uid for job in experiment.jobs for uid in job.client_ids]
    assert len(memberships) > len(set(memberships))
    deferred = _deferred_user_ids(monkeypatch)

    # Execute
    per_client = run_jobs(experiment, list(experiment.jobs), InProcessTransport(experiment))
    batched = run_jobs(experiment, list(experiment.jobs), new_transport(experiment, "auto"))

    # Assert
    assert len(deferred) > len(set(deferred))  # shared clients trained once per group on the deferred path
    for reference, other in zip(per_client, batched, strict=True):
        assert _relative_error(reference.params, other.params) < RELATIVE_ERROR["mlp"]
