"""engine.batch_clients: honest clients of Linear/ReLU models trained together over stacked weights.

Tolerance (float32, stated in fedshield.client.batched): the batched path is the per-client
path up to float reassociation, so after T rounds each group's parameters are within a relative
L2 error of 1e-5 (linear models) or 1e-3 (the MLP: a reassociation difference in a
pre-activation near 0 can flip a ReLU gate, and momentum carries the difference on; measured
2.2e-4 on this file's config at one thread, the thread count every run uses) of the per-client
ones, and the final models predict the same label on at least 99.5% of the test inputs. A
batched run is bit-identical to itself.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from fedshield.client.batched import linear_stack, train_clients_batched
from fedshield.client.work import train_step
from fedshield.config.build import build_experiment
from fedshield.config.user_errors import describe_user_error
from fedshield.engines.local import BatchedTransport, InProcessTransport, LocalEngine, client_training, new_transport
from fedshield.run import run
from fedshield.server.protocol import run_jobs, start_jobs, train_requests
from fedshield.task.determinism import configure_torch
from fedshield.task.updates import FactoredUpdate, dense_update
from helpers import job_params, tiny_config

RELATIVE_ERROR = {"logistic": 1e-5, "mlp": 1e-3}
PREDICTION_AGREEMENT = 0.995
ENSEMBLE = ["ensemble=flcert_d", "ensemble.num_groups=3", "num_clients=12", "num_rounds=3"]


def _relative_error(reference: torch.Tensor | FactoredUpdate, other: torch.Tensor | FactoredUpdate) -> float:
    reference, other = dense_update(reference), dense_update(other)
    return float((reference - other).norm() / reference.norm())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["logistic", "mlp"])
@pytest.mark.parametrize("optimizer", ["momentum_and_decay", "plain"])
def test_batched_groups_match_the_per_client_path_within_tolerance(tmp_path, model, optimizer):
    # Prepare: momentum and weight decay on, so every term of the SGD step is exercised, or
    # plain SGD (the fused in-place update); torch set up as every run sets it (one thread,
    # deterministic kernels), whatever ran before.
    configure_torch(threads=1)
    sgd = ["client.momentum=0.9", "client.weight_decay=0.001"] if optimizer == "momentum_and_decay" else []
    cfg = tiny_config(tmp_path, *ENSEMBLE, f"model={model}", *sgd)
    experiment = build_experiment(cfg)

    # Execute
    per_client = run_jobs(experiment, list(experiment.jobs), InProcessTransport(experiment))
    transport = new_transport(experiment, "auto")
    batched = run_jobs(experiment, list(experiment.jobs), transport)

    # Assert
    assert isinstance(transport, BatchedTransport)
    for reference, other in zip(per_client, batched, strict=True):
        assert _relative_error(reference.params, other.params) < RELATIVE_ERROR[model]
        assert reference.predictions is not None and other.predictions is not None
        assert float((reference.predictions == other.predictions).float().mean()) >= PREDICTION_AGREEMENT
        for a, b in zip(reference.history, other.history, strict=True):
            assert a["participants"] == b["participants"]
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


@pytest.mark.slow
def test_uneven_clients_and_a_client_smaller_than_the_batch_train_on_their_own_data(tmp_path):
    # Prepare: label-skewed clients of uneven sizes, a batch larger than some of them.
    cfg = tiny_config(
        tmp_path, "model=mlp", "num_clients=40", "partition=dirichlet", "partition.alpha=0.1", "client.batch_size=64"
    )
    experiment = build_experiment(cfg)
    (state,) = start_jobs(experiment, experiment.jobs[:1])
    requests = train_requests([state], {state.job.job_id: tuple(state.job.client_ids)}, 1)
    sizes = [experiment.num_examples(r.user_id) for r in requests]
    assert min(sizes) < 64 <= max(sizes) and len(set(sizes)) > 10, sizes

    # Execute
    stack = linear_stack(experiment.new_model())
    assert stack is not None
    batched = train_clients_batched(experiment, requests, stack, chunk_size=4)
    per_client = [train_step(experiment, request)[0] for request in requests]

    # Assert: each client's update is its own (per-client path), whatever the chunk's other clients.
    for request, one, other in zip(requests, per_client, batched, strict=True):
        assert other.num_examples == one.num_examples
        assert _relative_error(one.update, other.update) < RELATIVE_ERROR["mlp"], request.user_id
        assert other.loss == pytest.approx(one.loss, rel=1e-5)


@pytest.mark.slow
def test_repeated_batched_runs_are_bit_identical(tmp_path):
    overrides = [*ENSEMBLE, "model=mlp", "engine=local", "engine.workers=1"]
    summaries = [run(tiny_config(tmp_path, *overrides, name=name)) for name in ("a", "b")]

    assert all(s["client_training"]["path"] == "batched" for s in summaries)
    for job_id in range(3):
        assert torch.equal(job_params(tmp_path / "a", job_id), job_params(tmp_path / "b", job_id))
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "votes.npy"), np.load(tmp_path / "b" / "votes.npy"))
    recorded = json.loads((tmp_path / "a" / "summary.json").read_text())["client_training"]
    assert recorded["path"] == "batched" and recorded["chunk_size"] >= 1


@pytest.mark.slow
def test_cnn_falls_back_to_the_per_client_path_with_auto(tmp_path, caplog):
    overrides = ["model=cnn", "num_rounds=1", "engine=local", "engine.workers=1"]
    with caplog.at_level(logging.INFO, logger="fedshield.engines.local"):
        auto = run(tiny_config(tmp_path, *overrides, name="auto"))
    run(tiny_config(tmp_path, *overrides, "engine.batch_clients=false", name="per_client"))

    assert auto["client_training"]["path"] == "per-client"
    assert "MnistCNN" in auto["client_training"]["reason"]
    assert "no batched form for convolutions" in auto["client_training"]["reason"]  # says why
    assert sum("per-client clients" in record.getMessage() for record in caplog.records) == 1
    assert torch.equal(job_params(tmp_path / "auto"), job_params(tmp_path / "per_client"))


@pytest.mark.slow
def test_a_job_round_with_an_active_attacker_trains_client_by_client(tmp_path):
    # Prepare: attackers in some groups' samples (Fang's trim attack crafts from the round's updates).
    cfg = tiny_config(tmp_path, *ENSEMBLE, "attack=trim", "attack.num_malicious=2", "num_rounds=1")
    experiment = build_experiment(cfg)
    states = start_jobs(experiment, list(experiment.jobs))
    requests = train_requests(states, {s.job.job_id: tuple(s.job.client_ids) for s in states}, 1)
    attacked = {r.job.job_id for r in requests if experiment.is_malicious(r.user_id)}
    assert attacked and attacked != {s.job.job_id for s in states}

    # Execute
    batched = new_transport(experiment, "auto").train(requests)
    per_client = InProcessTransport(experiment).train(requests)

    # Assert: the attacked jobs' phase-1 replies are exactly today's; the others within tolerance.
    for request in requests:
        one, other = per_client[request.key], batched[request.key]
        assert one is not None and other is not None
        if request.job.job_id in attacked:
            assert torch.equal(one.update, other.update)
        else:
            assert _relative_error(one.update, other.update) < RELATIVE_ERROR["logistic"]  # TINY is the logistic model


@pytest.mark.slow
def test_a_round_where_every_job_is_attacked_trains_every_client_one_by_one(tmp_path):
    # Prepare: a single job, whose sample holds an attacker: nothing is left to batch
    cfg = tiny_config(tmp_path, "attack=trim", "attack.num_malicious=2", "num_rounds=1", "sample_fraction=1.0")
    experiment = build_experiment(cfg)
    states = start_jobs(experiment, list(experiment.jobs))
    requests = train_requests(states, {s.job.job_id: tuple(s.job.client_ids) for s in states}, 1)

    # Execute
    batched = new_transport(experiment, "auto").train(requests)

    # Assert
    per_client = InProcessTransport(experiment).train(requests)
    assert batched.keys() == per_client.keys()
    for key, reply in per_client.items():
        assert reply is not None and torch.equal(reply.update, batched[key].update)  # type: ignore[union-attr]


def test_batch_clients_other_than_auto_true_false_is_refused_naming_the_field(tmp_path):
    cfg = tiny_config(tmp_path, "engine=local", "engine.batch_clients=foo")

    with pytest.raises(Exception) as raised:
        instantiate(cfg.engine)

    message = describe_user_error(raised.value)
    assert message is not None and "\n" not in message
    assert message.startswith("engine.batch_clients: ") and "auto, true or false" in message and "'foo'" in message


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), (True, True), (False, False), ("false", False)])
def test_batch_clients_accepts_auto_true_and_false(value, expected):
    assert LocalEngine(batch_clients=value).batch_clients == expected


@pytest.mark.parametrize(("model", "path"), [("logistic", "batched"), ("mlp", "batched"), ("cnn", "per-client")])
def test_auto_batches_linear_models_only(tmp_path, model, path):
    experiment = build_experiment(tiny_config(tmp_path, f"model={model}"))

    assert client_training(experiment, "auto")["path"] == path
    assert client_training(experiment, False)["path"] == "per-client"
