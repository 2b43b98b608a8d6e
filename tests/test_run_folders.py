"""Run folders you can trust: a refused resume changes no file, ``fedshield resume RUN_DIR``
finishes a run from its saved config, and the command line refuses bad input in one line."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedshield.config import ConfigError
from fedshield.config.digest import config_digest
from fedshield.resume import asks_for_resume, resume_config
from fedshield.run import ResumeError, resume_line, run
from helpers import TINY, tiny_config

LOCAL = ["engine=local", "engine.workers=1"]
ENSEMBLE = ["ensemble=flcert_d", "ensemble.num_groups=3", *LOCAL]


def folder_state(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) with the hash of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.blake2b(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def fedshield(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-m", "fedshield.cli", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 3-group FLCert-D run (trains: a few seconds)."""
    folder = tmp_path_factory.mktemp("runs")
    run(tiny_config(folder, *ENSEMBLE, name="done"))
    return folder / "done"


# Item 1: a refused resume changes no file, and is refused before anything is written.


@pytest.mark.slow
@pytest.mark.parametrize("change", ["num_rounds=3", "ensemble.num_groups=2", "client.learning_rate=0.2"])
def test_refused_resume_leaves_the_folder_byte_identical(finished_run, change):
    before = folder_state(finished_run)
    cfg = tiny_config(finished_run.parent, *ENSEMBLE, change, "resume=true", name="done")
    key = change.split("=")[0]
    with pytest.raises(ResumeError, match=rf"{key} \(saved .*, given .*\)"):
        run(cfg)
    assert folder_state(finished_run) == before


@pytest.mark.slow
def test_refused_resume_on_the_command_line_writes_nothing(finished_run):
    """``resume=true output_dir=RUN_DIR`` with another config: one line, status 2, no file
    changed (Hydra's .hydra/ included: the resume never goes through Hydra's run folder)."""
    before = folder_state(finished_run)
    result = fedshield(
        *TINY, *ENSEMBLE, "num_rounds=3", "resume=true", f"output_dir={finished_run}", cwd=finished_run.parent
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: resume:")
    assert "Traceback" not in result.stderr
    assert folder_state(finished_run) == before


# Item 2: `fedshield resume RUN_DIR`, with what was resumed said.


@pytest.mark.slow
def test_resume_command_uses_the_saved_config_and_says_what_it_resumed(finished_run, tmp_path):
    """A killed run (one group's checkpoint removed) resumed from its folder alone gives the
    uninterrupted run's certificate, retrains only the missing group, and says so."""
    killed = tmp_path / "killed"
    result = fedshield(*TINY, *ENSEMBLE, f"output_dir={killed}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = sorted(path.name for path in (killed / "jobs").glob("job_*.pt"))
    assert len(jobs) >= 2  # empty hash groups train no job
    removed, *kept_names = jobs
    (killed / "jobs" / removed).unlink()
    (killed / "summary.json").unlink()
    kept = {name: (killed / "jobs" / name).stat().st_mtime_ns for name in kept_names}

    resumed = fedshield("resume", str(killed), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    total = len(jobs)
    assert f"resuming {killed}: {total - 1} of {total} groups already finished, training the other 1" in resumed.stderr
    assert {name: (killed / "jobs" / name).stat().st_mtime_ns for name in kept} == kept
    assert (killed / "votes.npy").read_bytes() == (finished_run / "votes.npy").read_bytes()
    assert (killed / "jobs" / removed).exists()


def test_resume_line_counts_the_finished_groups(tmp_path):
    assert (
        resume_line(tmp_path, finished=0, total=4)
        == f"nothing to resume in {tmp_path}: 0 of 4 groups finished, training all 4"
    )
    assert "3 of 4 groups already finished, training the other 1" in resume_line(tmp_path, finished=3, total=4)
    assert "all 4 groups already finished" in resume_line(tmp_path, finished=4, total=4)


def test_resume_config_is_the_saved_config(tmp_path):
    saved = tiny_config(tmp_path, *ENSEMBLE, name="a")
    folder = tmp_path / "a"
    folder.mkdir()
    from omegaconf import OmegaConf

    (folder / "config.yaml").write_text(OmegaConf.to_yaml(saved, resolve=True))
    cfg = resume_config(folder, ["engine.workers=2"])  # changes no result: allowed
    assert cfg.resume is True and Path(cfg.output_dir) == folder.resolve()
    assert config_digest(cfg) == config_digest(saved)
    with pytest.raises(ConfigError, match=r"^num_rounds: resume keeps the saved config \(2\)"):
        resume_config(folder, ["num_rounds=5"])
    with pytest.raises(ConfigError, match=r"^alpha: not a key of"):
        resume_config(folder, ["alpha=0.5"])
    with pytest.raises(ConfigError, match=r"^run_dir: .* is not a fedshield run folder"):
        resume_config(tmp_path / "missing", [])


def test_resume_true_is_recognised_only_as_the_resume_key():
    assert asks_for_resume(["num_rounds=2", "resume=true"])
    assert asks_for_resume(["resume=True"])
    assert not asks_for_resume(["resume=false", "engine.resume=true"])


def test_resume_true_without_a_folder_is_refused_and_creates_nothing(tmp_path):
    result = fedshield(*TINY, "resume=true", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: resume: name the run folder: `fedshield resume RUN_DIR` (resume=true alone would start a new "
        "timestamped folder, with nothing to resume)"
    )
    assert list(tmp_path.iterdir()) == []


# Item 6 and the bad-input table: one line `error: <field>: ...`, status 2, nothing written.

BAD_INPUTS = [
    (["num_rounds=abc"], "error: num_rounds: Value 'abc' of type 'str' could not be converted to Integer"),
    (["device=foo"], "error: device: must be cpu, cuda or cuda:N"),
    (["num_rounds=0"], "error: num_rounds: must be >= 1; got 0"),
    (["sample_fraction=2"], "error: sample_fraction: must be in (0, 1]; got 2.0"),
    (["precision=float16"], "error: precision: must be one of ['float32', 'float64']"),
    (["num_roundz=3"], "error: num_roundz: no such setting"),
    (["dataset=nope"], "error: dataset: no config named 'nope'; choose one of cifar10, fashion_mnist"),
    (["client.learning_rate=abc"], "error: client.learning_rate: Value 'abc' of type 'str' could not be converted"),
    (["client.local_steps=0"], "error: client.local_steps: must be >= 1; got 0"),
    (["ensemble=flcert_d", "ensemble.num_groups=0"], "error: ensemble.num_groups: must be in [1, n=6]; got 0"),
    (["ensemble=flcert_d", "ensemble.bounds=simultaneous"], "error: ensemble.bounds: no such setting"),
    (["defense=flip", "defense.tau=2"], "error: defense.tau: (rejection threshold) must be in [0, 1); got 2"),
    (["only_jobs=[7]"], "error: only_jobs: names jobs [7] outside [0, 1)"),
    (["num_rounds=1,2"], "error: Ambiguous value for argument 'num_rounds=1,2'"),
    (["--multirun", "num_rounds=1,abc"], "error: num_rounds: Value 'abc' of type 'str' could not be converted"),
    (["attack=backdoor", "attack.target_label=12"], "error: attack.target_label: must be in [0, 10)"),
    (["attack=krum", "attack.num_malicious=3"], "error: attack.num_malicious: "),
    (["strategy=krum", "strategy.num_malicious=2"], "error: strategy: "),
    (["resume", "nothere"], "error: run_dir: "),
    (["certify", "nothere"], "error: run_dir: "),
    (["report", "nothere"], "error: sweep_dir: no summary.json under"),
]


@pytest.mark.parametrize(("arguments", "message"), BAD_INPUTS, ids=[" ".join(args) for args, _ in BAD_INPUTS])
def test_bad_input_is_one_line_with_status_2_and_writes_nothing(tmp_path, arguments, message):
    args = [*TINY, *arguments] if arguments[0] not in ("resume", "certify", "report") else arguments
    result = fedshield(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/ or multirun/ folder, no .hydra


def test_full_error_shows_the_traceback(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fedshield.cli", *TINY, "device=foo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_help_names_every_command(tmp_path):
    result = fedshield("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("fedshield resume RUN_DIR", "fedshield certify RUN_DIR", "fedshield report SWEEP_DIR"):
        assert command in result.stdout
