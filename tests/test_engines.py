"""Determinism and the agreement of the two drivers (Flower on Ray, in-process)."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fedshield.config import build_experiment
from fedshield.models.params import get_flat_params
from fedshield.run import run
from helpers import LOCAL_PER_CLIENT, PROCESS_LOG_ENV, job_params, model_builders, tiny_config

# Every test here trains federated jobs.
pytestmark = pytest.mark.slow


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()


def _history(run_dir, job_id: int) -> list[dict]:
    """A job's per-round records without the wall time (the one entry allowed to vary)."""
    records = torch.load(run_dir / "jobs" / f"job_{job_id:05d}.pt", weights_only=True)["history"]
    return [{key: value for key, value in record.items() if key != "wall_time"} for record in records]


@pytest.mark.flower
def test_flower_job_is_bit_identical_across_runs_and_equals_local_engine(tmp_path):
    runs = {
        "flower_a": tiny_config(tmp_path, "engine=flower", name="flower_a"),
        "flower_b": tiny_config(tmp_path, "engine=flower", name="flower_b"),
        "local": tiny_config(tmp_path, *LOCAL_PER_CLIENT, "engine.workers=1", name="local"),
    }
    for cfg in runs.values():
        run(cfg)
    digests = {name: _digest(job_params(tmp_path / name)) for name in runs}
    assert digests["flower_a"] == digests["flower_b"], "same config and seed must give the same model"
    assert digests["flower_a"] == digests["local"], "the two engines must agree bit for bit"
    for name in runs:
        files = {p.name for p in (tmp_path / name).iterdir()}
        assert {"config.yaml", "metrics.json", "summary.json", "final_model.pt", "accuracy.png", "votes.npy"} <= files
    metrics = json.loads((tmp_path / "local" / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in metrics] == [1, 2] and all(0 <= r["accuracy"] <= 1 for r in metrics)


def test_other_seed_gives_another_model(tmp_path):
    # Prepare: two configs that differ in the seed only.
    cfg_a = tiny_config(tmp_path, "engine=local", "engine.workers=1", name="a")
    cfg_b = tiny_config(tmp_path, "engine=local", "engine.workers=1", "seed=1", name="b")

    # Execute
    run(cfg_a)
    run(cfg_b)

    # Assert: the configs differ in nothing but the seed (and where the runs write) ...
    inputs = {name: OmegaConf.to_container(cfg, resolve=False) for name, cfg in (("a", cfg_a), ("b", cfg_b))}
    for config in inputs.values():
        config.pop("output_dir")
    assert (inputs["a"].pop("seed"), inputs["b"].pop("seed")) == (0, 1)
    assert inputs["a"] == inputs["b"]
    # ... and the seed reaches what it seeds: the initial model, the data split, the client sampling.
    experiments = {"a": build_experiment(cfg_a), "b": build_experiment(cfg_b)}
    initial = {name: get_flat_params(e.initial_model(e.jobs[0])) for name, e in experiments.items()}
    assert torch.equal(initial["a"], get_flat_params(experiments["a"].initial_model(experiments["a"].jobs[0])))
    assert not torch.equal(initial["a"], initial["b"])
    first_client = {name: e.federation.indices[0] for name, e in experiments.items()}
    assert not np.array_equal(first_client["a"], first_client["b"])
    # User IDs are seeded too, so compare the sampled clients by position in the federation.
    sampled = {
        name: [[e.federation.user_ids.index(uid) for uid in r["participants"]] for r in _history(tmp_path / name, 0)]
        for name, e in experiments.items()
    }
    assert sampled["a"] != sampled["b"]
    assert not torch.equal(job_params(tmp_path / "a"), job_params(tmp_path / "b"))


def test_worker_processes_do_not_change_results(tmp_path, monkeypatch):
    # Prepare: the model builder records which processes build models, i.e. run the jobs.
    common = [
        "engine=local",
        "ensemble=flcert_d",
        "ensemble.num_groups=3",
        "num_clients=12",
        "model._target_=helpers.pid_recording_logistic",
    ]
    builders = {"one": tmp_path / "builders_one", "two": tmp_path / "builders_two"}

    # Execute
    for name, workers in (("one", 1), ("two", 2)):
        builders[name].mkdir()
        monkeypatch.setenv(PROCESS_LOG_ENV, str(builders[name]))  # spawned workers inherit it
        run(tiny_config(tmp_path, *common, f"engine.workers={workers}", name=name))

    # Assert: one worker trains in this process; two workers train in (at most two) child processes ...
    assert set(model_builders(builders["one"])) == {os.getpid()}
    workers = {pid for pid, parent in model_builders(builders["two"]).items() if pid != os.getpid()}
    assert 1 <= len(workers) <= 2, f"the jobs must run in the engine's worker processes; got {workers}"
    assert all(model_builders(builders["two"])[pid] == os.getpid() for pid in workers), "workers of this run"
    # ... and every written result is identical.
    one, two = tmp_path / "one", tmp_path / "two"
    for job_id in range(3):
        assert torch.equal(job_params(one, job_id), job_params(two, job_id)), f"job {job_id}"
        assert _history(one, job_id) == _history(two, job_id), f"job {job_id}"
    for name in ("predictions.npy", "votes.npy", "labels.npy"):
        np.testing.assert_array_equal(np.load(one / name), np.load(two / name), err_msg=name)
    assert (one / "certification.csv").read_text() == (two / "certification.csv").read_text()
    summary_one, summary_two = (json.loads((path / "summary.json").read_text()) for path in (one, two))
    assert summary_one["certified_accuracy"] == summary_two["certified_accuracy"]
    assert summary_one["ensemble_accuracy"] == summary_two["ensemble_accuracy"]
