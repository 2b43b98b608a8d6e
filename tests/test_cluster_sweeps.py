"""Sweeps through a cluster launcher: hydra-submitit-launcher (SLURM), tested with its
``submitit_local`` launcher, which submits each job as its own process the way SLURM would."""

import csv
import json
import os
import subprocess
import sys

import pytest

from fedshield.config.preflight import check_runs
from fedshield.config.user_errors import describe_user_error
from fedshield.errors import UserError
from helpers import TINY

SWEEP = [*TINY, "engine=local", "engine.workers=1", "ensemble=flcert_d", "num_clients=12", "ensemble.num_groups=2"]
SLURM_SETTINGS = [
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.partition=gpu",
    "hydra.launcher.timeout_min=30,60",  # a swept launcher setting is a sweep dimension too
    "hydra.launcher.gpus_per_node=1",
    "hydra.launcher.cpus_per_task=4",
]


def _fedshield(*arguments, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fedshield.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)},
    )


def test_preflight_accepts_slurm_launcher_settings_and_still_refuses_a_bad_field():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

    assert check_runs([*SWEEP, *SLURM_SETTINGS], multirun=True) == 2
    with pytest.raises(UserError) as refused:
        check_runs([*SWEEP, *SLURM_SETTINGS, "client.local_steps=0"], multirun=True)
    assert describe_user_error(refused.value) == "client.local_steps: must be >= 1; got 0"


@pytest.mark.slow
def test_submitit_local_sweep_gives_each_job_its_own_resumable_run_folder(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    # Prepare: a test-only Hydra callback writes each job's process id (helpers.RecordJobProcess).
    sweep = tmp_path / "sweep"
    record = "+hydra.callbacks.job_process._target_=helpers.RecordJobProcess"

    # Execute
    result = _fedshield(
        "--multirun", *SWEEP, "hydra/launcher=submitit_local", record, "num_rounds=1,2", f"hydra.sweep.dir={sweep}"
    )

    # Assert: submitit ran both jobs, each in its own process, each writing its own run folder.
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2, "each job must go through submitit"
    launcher = json.loads((sweep / "launcher.json").read_text())["pid"]
    job_pids = [json.loads((sweep / job / "job_process.json").read_text())["pid"] for job in ("0", "1")]
    assert len({launcher, *job_pids}) == 3, "each job runs in its own submitit process, not the launcher's"
    for job, num_rounds in (("0", 1), ("1", 2)):
        run_dir = sweep / job
        for name in ("summary.json", "votes.npy", "config.yaml", "certification.csv"):
            assert (run_dir / name).is_file(), f"{run_dir / name} missing"
        assert f"num_rounds: {num_rounds}\n" in (run_dir / "config.yaml").read_text()

    # The report collects both runs, and each run folder resumes on its own.
    report = _fedshield("report", str(sweep))
    assert report.returncode == 0, report.stderr[-3000:]
    with open(sweep / "report.csv") as handle:
        assert sorted(row["run"] for row in csv.DictReader(handle)) == ["0", "1"]
    resumed = _fedshield("resume", str(sweep / "1"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "all 2 groups already finished" in resumed.stderr
