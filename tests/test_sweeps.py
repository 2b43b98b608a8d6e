"""Hydra multirun sweeps (basic and joblib launchers) and ``fedshield report``."""

import csv
import json
import os
import subprocess
import sys

import pytest

from fedshield.report import make_report
from helpers import TINY

pytestmark = pytest.mark.slow

SWEEP = [*TINY, "engine=local", "engine.workers=1", "ensemble=flcert_d", "num_clients=12"]


def _multirun(sweep_dir, *overrides):
    command = [sys.executable, "-m", "fedshield.cli", "--multirun", *SWEEP, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)},
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_basic_launcher_sweep_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    _multirun(sweep, "ensemble.num_groups=2,3", "strategy=fedavg,median")
    runs = sorted(p.parent for p in sweep.rglob("summary.json"))
    assert len(runs) == 4
    written = make_report(sweep)
    names = {p.name for p in written}
    assert {"report.csv", "ca_by_num_groups.png", "ca_by_rule.png"} <= names
    with open(sweep / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((row["N"], row["strategy"]) for row in rows) == [
        ("2", "FedAvg"),
        ("2", "Median"),
        ("3", "FedAvg"),
        ("3", "Median"),
    ]
    for row in rows:  # CA@m never increases with m
        values = [float(row[f"CA@{m}"]) for m in (0, 1, 2, 5, 10)]
        assert values == sorted(values, reverse=True)


def test_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    # Prepare: a test-only Hydra callback writes each job's process id and wall-clock interval.
    sweep = tmp_path / "joblib"
    record = "+hydra.callbacks.job_process._target_=helpers.RecordJobProcess"

    # Execute
    _multirun(sweep, "ensemble.num_groups=2,3", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", record)

    # Assert: both jobs finished, each in its own worker process of the launcher, at the same time.
    assert sorted(p.parent.name for p in sweep.rglob("summary.json")) == ["0", "1"]
    launcher = json.loads((sweep / "launcher.json").read_text())["pid"]
    jobs = [json.loads((sweep / job / "job_process.json").read_text()) for job in ("0", "1")]
    assert jobs[0]["pid"] != jobs[1]["pid"], "the two jobs must run in two worker processes"
    assert launcher not in {job["pid"] for job in jobs}, "the jobs must not run in the launching process"
    assert [job["ppid"] for job in jobs] == [launcher, launcher], "the workers are the launcher's (joblib's loky)"
    # The two jobs' wall-time intervals overlap: each started before the other ended.
    assert max(job["start"] for job in jobs) < min(job["end"] for job in jobs), jobs


def test_report_compares_systems_and_backdoor_runs(tmp_path):
    sweep = tmp_path / "systems"
    backdoor = ["attack=backdoor", "attack.num_malicious=1"]
    _multirun(sweep / "flcert_d", "ensemble.num_groups=3", *backdoor)
    _multirun(sweep / "single", "ensemble=single", *backdoor)
    _multirun(sweep / "crfl", "ensemble=crfl", "ensemble.num_noisy_models=5", *backdoor)
    names = {p.name for p in make_report(sweep)}
    assert {"ca_by_system.png", "backdoor_bars.png"} <= names
