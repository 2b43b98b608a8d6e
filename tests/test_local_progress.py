"""engine=local with worker processes reports every job's every round to the parent as it
happens, not only when a job (or a batched wave) ends."""

import logging
import re

import pytest

from fedshield import progress
from fedshield.config import build_experiment
from fedshield.engines.local import LocalEngine
from fedshield.run import train_jobs
from fedshield.server.checkpoints import CheckpointStore
from helpers import tiny_config

pytestmark = pytest.mark.slow

NUM_GROUPS = 4
NUM_ROUNDS = 3
TWO_WORKERS = [
    "ensemble=flcert_d",
    f"ensemble.num_groups={NUM_GROUPS}",
    "num_clients=12",
    f"num_rounds={NUM_ROUNDS}",
    "engine=local",
    "engine.workers=2",
    "eval_every=0",
]


@pytest.mark.parametrize("batch_clients", [False, True], ids=["per-client-pool", "batched-waves"])
def test_workers_report_every_job_round_once_before_the_job_is_done(tmp_path, batch_clients):
    experiment = build_experiment(tiny_config(tmp_path, *TWO_WORKERS))
    events: list[tuple] = []
    LocalEngine(workers=2, batch_clients=batch_clients).train(
        experiment,
        experiment.jobs,
        on_job_done=lambda finished: events.append(("done", finished.job_id)),
        on_progress=lambda job_id, server_round: events.append(("round", job_id, server_round)),
    )
    rounds = [event[1:] for event in events if event[0] == "round"]
    assert sorted(rounds) == [(job.job_id, r) for job in experiment.jobs for r in range(1, NUM_ROUNDS + 1)]
    for job in experiment.jobs:
        done_at = events.index(("done", job.job_id))
        assert all(events.index(("round", job.job_id, r)) < done_at for r in range(1, NUM_ROUNDS + 1))


def test_plain_progress_lines_count_rounds_of_jobs_in_workers(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 0.0)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    cfg = tiny_config(tmp_path, *TWO_WORKERS, "engine.batch_clients=false")
    experiment = build_experiment(cfg)
    store = CheckpointStore(tmp_path / "jobs", digest="test")
    with caplog.at_level(logging.INFO, logger="fedshield.progress"):
        train_jobs(experiment, LocalEngine(workers=2, batch_clients=False), store)
    counts = [
        int(match.group(1))
        for record in caplog.records
        if record.name == "fedshield.progress" and (match := re.search(r"(\d+)/\d+ rounds", record.getMessage()))
    ]
    total = NUM_GROUPS * NUM_ROUNDS
    assert counts[-1] == total
    # Not only whole jobs' worth of rounds: the rounds show as they finish in the workers.
    assert set(range(1, total + 1)) <= set(counts)
