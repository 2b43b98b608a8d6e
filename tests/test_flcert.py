"""FLCert end to end: group isolation, engine agreement, resume, re-certification, soundness."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fedshield.commands import recertify
from fedshield.run import run
from helpers import LOCAL_PER_CLIENT, job_params, tiny_config

# Every test here trains FLCert groups (run() or the CLI).
pytestmark = pytest.mark.slow

ENSEMBLE = ["ensemble=flcert_d", "ensemble.num_groups=3", "num_clients=12", "precision=float64"]


@pytest.mark.flower
def test_ensemble_groups_equal_lone_runs_and_local_engine(tmp_path):
    """Group g from the one-run Flower ensemble == a lone Flower run of group g == engine=local."""
    run(tiny_config(tmp_path, *ENSEMBLE, "engine=flower", name="ensemble"))
    run(tiny_config(tmp_path, *ENSEMBLE, "engine=flower", "only_jobs=[1]", name="lone"))
    run(tiny_config(tmp_path, *ENSEMBLE, *LOCAL_PER_CLIENT, name="local"))
    assert torch.equal(job_params(tmp_path / "ensemble", 1), job_params(tmp_path / "lone", 1))
    worst = 0.0
    for job_id in range(3):
        flower, local = job_params(tmp_path / "ensemble", job_id), job_params(tmp_path / "local", job_id)
        assert flower.dtype == torch.float64
        worst = max(worst, float((flower - local).abs().max()))
    assert worst == 0.0, f"float64 engines must agree bit for bit; worst weight difference {worst}"
    for name in ("votes.npy", "labels.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "ensemble" / name), np.load(tmp_path / "local" / name))
    assert (tmp_path / "ensemble" / "certification.csv").read_text() == (
        tmp_path / "local" / "certification.csv"
    ).read_text()


PAUSE_AFTER_TWO_CHECKPOINTS = """
import time
from fedshield.server import checkpoints

_save = checkpoints.CheckpointStore.save


def save(self, *args, **kwargs):
    _save(self, *args, **kwargs)
    if len(list(self.directory.glob("job_*.pt"))) == 2:
        time.sleep(600)


checkpoints.CheckpointStore.save = save
"""


def test_killed_run_resumes_bit_identical(tmp_path):
    overrides = [
        *ENSEMBLE,
        "ensemble.num_groups=4",
        "num_clients=16",
        "engine=local",
        "engine.workers=1",
        "num_rounds=3",
    ]
    reference = run(tiny_config(tmp_path, *overrides, name="reference"))

    killed_dir = tmp_path / "killed"
    from helpers import TINY

    # The run pauses after its second checkpoint (a sitecustomize hook, test-only), so the kill
    # lands between two groups however fast the machine trains them.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PAUSE_AFTER_TWO_CHECKPOINTS)
    command = [sys.executable, "-m", "fedshield.cli", *TINY, *overrides, f"output_dir={killed_dir}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    try:
        deadline = time.monotonic() + 120
        while len(list((killed_dir / "jobs").glob("job_*.pt"))) < 2:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished_before = {p.name for p in (killed_dir / "jobs").glob("job_*.pt")}
    assert 2 <= len(finished_before) < 4 and not (killed_dir / "summary.json").exists()
    mtimes = {name: (killed_dir / "jobs" / name).stat().st_mtime_ns for name in finished_before}

    resumed = run(tiny_config(tmp_path, *overrides, "resume=true", name="killed"))
    for name in finished_before:  # finished groups were not retrained
        assert (killed_dir / "jobs" / name).stat().st_mtime_ns == mtimes[name]
    for job_id in range(4):
        assert torch.equal(job_params(killed_dir, job_id), job_params(tmp_path / "reference", job_id))
    assert resumed["certified_accuracy"] == reference["certified_accuracy"]
    np.testing.assert_array_equal(np.load(killed_dir / "votes.npy"), np.load(tmp_path / "reference" / "votes.npy"))


def test_resume_refuses_another_config(tmp_path):
    """Refused by the saved config.yaml first and, were that file lost, by each checkpoint's
    digest: a resume never mixes two experiments."""
    from fedshield.run import ResumeError
    from fedshield.server.checkpoints import CheckpointMismatchError

    run(tiny_config(tmp_path, *ENSEMBLE, "engine=local", "engine.workers=1", name="a"))
    changed = tiny_config(
        tmp_path, *ENSEMBLE, "engine=local", "engine.workers=1", "client.learning_rate=0.2", "resume=true", name="a"
    )
    with pytest.raises(ResumeError, match=r"client.learning_rate \(saved 0.05, given 0.2\)"):
        run(changed)
    (tmp_path / "a" / "config.yaml").unlink()
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        run(changed)


def test_recertify_from_saved_votes(tmp_path):
    overrides = ["ensemble=flcert_p", "ensemble.num_groups=8", "ensemble.group_size=2", "num_clients=8", "engine=local"]
    summary = run(tiny_config(tmp_path, *overrides, name="p"))
    again = recertify(tmp_path / "p", [])
    assert again["certified_accuracy"] == summary["certified_accuracy"]
    loose = recertify(tmp_path / "p", ["ensemble.alpha=0.5"])
    strict = recertify(tmp_path / "p", ["ensemble.alpha=0.0001"])
    # A larger alpha gives tighter bounds, so it certifies at least as much at every m.
    for m, value in strict["certified_accuracy"].items():
        assert loose["certified_accuracy"].get(m, 0.0) >= value
    assert (tmp_path / "p" / "certify" / "ensemble.alpha=0.5" / "certification.csv").exists()


def test_certificate_holds_against_a_real_attack(tmp_path):
    """Empirical soundness: with m malicious clients, inputs certified at level >= m keep their
    clean-run prediction, however the attackers ruin their groups' models."""
    common = [
        "ensemble=flcert_d",
        "ensemble.num_groups=7",
        "num_clients=28",
        "num_rounds=4",
        "sample_fraction=1.0",
        "engine=local",
        "client.local_steps=10",
    ]
    run(tiny_config(tmp_path, *common, name="clean"))
    clean = np.loadtxt(tmp_path / "clean" / "certification.csv", delimiter=",", skiprows=1, dtype=np.int64)
    for num_malicious, attack in ((1, "gaussian"), (2, "sign_flip")):
        overrides = [*common, f"attack={attack}", f"attack.num_malicious={num_malicious}"]
        if attack == "sign_flip":
            overrides.append("attack.scale=50")
        run(tiny_config(tmp_path, *overrides, name=attack))
        attacked = np.loadtxt(tmp_path / attack / "certification.csv", delimiter=",", skiprows=1, dtype=np.int64)
        certified = clean[:, 3] >= num_malicious
        assert certified.sum() > 0.3 * len(clean), "too few certified inputs for the test to mean anything"
        np.testing.assert_array_equal(attacked[certified, 2], clean[certified, 2])
        # and the attack did change something (the groups it reached are ruined)
        assert (attacked[:, 2] != clean[:, 2]).any() or (attacked[:, 3] != clean[:, 3]).any()
