"""``fedshield certify RUN_DIR [overrides]``: it certifies the run's own votes, checks every file it
reads against the others and the config, and refuses overrides that are unknown, would need
retraining or that the run's ensemble lacks, writing nothing when it refuses."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedshield.commands import recertify
from fedshield.config import ConfigError, compose_config
from fedshield.files import write_json, write_npy, write_text
from fedshield.run import run, votes_from_predictions
from helpers import tiny_config

NUM_LABELS = 10
NUM_INPUTS = 40
FLCERT_P = ["ensemble=flcert_p", "ensemble.num_groups=8", "ensemble.group_size=2", "num_clients=8"]


def write_run_folder(run_dir: Path, overrides: list[str], *, num_voters: int, num_labels: int = NUM_LABELS) -> Path:
    """The files a run writes, for a config composed from ``overrides``: random predictions of
    ``num_voters`` voters (which must be the config's number of voters) and the votes they cast."""
    config = compose_config(overrides, output_dir=run_dir)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config, resolve=True))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_LABELS, NUM_INPUTS)
    # Most voters predict the true label, so some inputs are certified at m >= 1.
    predictions = np.where(rng.random((num_voters, NUM_INPUTS)) < 0.8, labels, rng.integers(0, NUM_LABELS))
    write_npy(run_dir / "predictions.npy", predictions.astype(np.int64))
    votes = votes_from_predictions(predictions, num_labels=num_labels)
    if isinstance(votes, np.ndarray):
        write_npy(run_dir / "votes.npy", votes)
    write_npy(run_dir / "labels.npy", labels)
    write_npy(run_dir / "num_labels.npy", np.asarray(num_labels))
    write_json(run_dir / "summary.json", {"num_rounds": 2, "final_accuracy": 0.5})
    return run_dir


@pytest.fixture
def flcert_p_run(tmp_path) -> Path:
    return write_run_folder(tmp_path / "run", FLCERT_P, num_voters=8)


def folder_state(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with the SHA-256 of its content (folders: 'dir')."""
    return {
        str(path.relative_to(folder)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
    }


# ------------------------------------------------------------------ the files certify reads


def test_garbage_votes_file_is_refused(flcert_p_run):
    (flcert_p_run / "votes.npy").write_bytes(b"\x00not a numpy file at all\xff" * 10)
    with pytest.raises(ConfigError, match=r"^votes\.npy: cannot be read as a \.npy array"):
        recertify(flcert_p_run, [])


def test_votes_of_the_wrong_shape_are_refused(flcert_p_run):
    votes = np.load(flcert_p_run / "votes.npy")
    write_npy(flcert_p_run / "votes.npy", votes[:, :-1])
    with pytest.raises(ConfigError, match=r"^votes\.npy: must have shape \(test inputs=40, labels=10\).*\(40, 9\)"):
        recertify(flcert_p_run, [])


def test_votes_that_do_not_sum_to_the_number_of_groups_are_refused(flcert_p_run):
    votes = np.load(flcert_p_run / "votes.npy")
    votes[3, 0] += 1
    write_npy(flcert_p_run / "votes.npy", votes)
    with pytest.raises(ConfigError, match=r"^votes\.npy: each input's votes must sum to N=8 .* got 9 for input 3"):
        recertify(flcert_p_run, [])


def test_float_votes_are_refused(flcert_p_run):
    write_npy(flcert_p_run / "votes.npy", np.load(flcert_p_run / "votes.npy").astype(np.float64))
    with pytest.raises(ConfigError, match=r"^votes\.npy: must hold integers; got dtype float64"):
        recertify(flcert_p_run, [])


def test_a_label_outside_the_label_space_is_refused(flcert_p_run):
    labels = np.load(flcert_p_run / "labels.npy")
    labels[5] = NUM_LABELS
    write_npy(flcert_p_run / "labels.npy", labels)
    with pytest.raises(ConfigError, match=r"^labels\.npy: every label must be in \[0, 10\); got 10"):
        recertify(flcert_p_run, [])


def test_a_dense_run_without_votes_is_refused_not_certified_from_predictions(flcert_p_run):
    (flcert_p_run / "votes.npy").unlink()
    with pytest.raises(ConfigError, match=r"^votes\.npy: missing"):
        recertify(flcert_p_run, [])


def test_certify_reads_votes_not_predictions(flcert_p_run):
    """Unanimous votes for the true label make every input correct, whatever the (untouched)
    predictions.npy says: the certificate comes from votes.npy."""
    labels = np.load(flcert_p_run / "labels.npy")
    unanimous = np.zeros((NUM_INPUTS, NUM_LABELS), dtype=np.int64)
    unanimous[np.arange(NUM_INPUTS), labels] = 8
    write_npy(flcert_p_run / "votes.npy", unanimous)
    summary = recertify(flcert_p_run, ["ensemble.alpha=0.5"])  # N=8 unanimous votes clear alpha=0.5
    assert summary["ensemble_accuracy"] == 1.0
    certification = np.loadtxt(
        flcert_p_run / "certify" / "ensemble.alpha=0.5" / "certification.csv", delimiter=",", skiprows=1, dtype=np.int64
    )
    np.testing.assert_array_equal(certification[:, 2], labels)


def test_crfl_votes_must_sum_to_the_number_of_noisy_copies(tmp_path):
    """CRFL's voters are its noisy copies, not its one job: one vote per input is too few."""
    run_dir = write_run_folder(tmp_path / "crfl", ["ensemble=crfl", "ensemble.num_noisy_models=5"], num_voters=1)
    with pytest.raises(ConfigError, match=r"^votes\.npy: each input's votes must sum to N=5 "):
        recertify(run_dir, [])


def test_a_corrupt_predictions_file_of_a_sparse_run_is_refused(tmp_path):
    """With more than 1000 labels a run keeps only predictions.npy; certify reads and checks it."""
    run_dir = write_run_folder(tmp_path / "sparse", FLCERT_P, num_voters=8, num_labels=1001)
    assert not (run_dir / "votes.npy").exists()
    assert recertify(run_dir, [])["N"] == 8
    (run_dir / "predictions.npy").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"^predictions\.npy: cannot be read as a \.npy array"):
        recertify(run_dir, [])


def test_a_folder_without_config_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^run_dir: .*empty is not a fedshield run folder: config\.yaml is missing"):
        recertify(tmp_path / "empty", [])


# ------------------------------------------------------------------ overrides


def test_a_bare_key_is_refused_with_the_prefixed_key_suggested(flcert_p_run):
    with pytest.raises(ConfigError, match=r"^alpha: no such setting .*did you mean ensemble\.alpha\?"):
        recertify(flcert_p_run, ["alpha=0.5"])


def test_bounds_on_an_flcert_d_run_is_a_one_line_error(tmp_path):
    run_dir = write_run_folder(tmp_path / "d", ["ensemble=flcert_d", "ensemble.num_groups=1"], num_voters=1)
    with pytest.raises(
        ConfigError, match=r"^ensemble\.bounds: the run's flcert_d ensemble has no such setting"
    ) as error:
        recertify(run_dir, ["ensemble.bounds=simultaneous"])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("override", ["num_rounds=3", "ensemble.num_groups=4", "ensemble.group_size=3"])
def test_a_setting_that_needs_retraining_is_refused(flcert_p_run, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}: changing it would need retraining"):
        recertify(flcert_p_run, [override])


def test_a_certification_setting_outside_its_range_is_refused(flcert_p_run):
    with pytest.raises(ConfigError, match=r"^ensemble\.alpha: must be in \(0, 1\); got 2"):
        recertify(flcert_p_run, ["ensemble.alpha=2"])


def test_the_output_folder_is_named_from_the_settings_used(flcert_p_run):
    summary = recertify(flcert_p_run, ["ensemble.bounds=simultaneous", "ensemble.alpha=0.50"])
    assert sorted(p.name for p in (flcert_p_run / "certify").iterdir()) == [
        "ensemble.alpha=0.5,ensemble.bounds=simultaneous"
    ]
    assert (summary["alpha"], summary["bounds"]) == (0.5, "simultaneous")
    assert summary["overrides"] == ["ensemble.alpha=0.5", "ensemble.bounds=simultaneous"]


@pytest.mark.parametrize(
    ("overrides", "damage"),
    [
        (["num_rounds=3"], None),
        (["alpha=0.5"], None),
        (["ensemble.alpha=0.5"], "garbage_votes"),
        (["ensemble.alpha=0.5"], "wrong_sums"),
    ],
)
def test_a_refused_certify_writes_nothing(flcert_p_run, overrides, damage):
    if damage == "garbage_votes":
        (flcert_p_run / "votes.npy").write_bytes(b"garbage")
    elif damage == "wrong_sums":
        write_npy(flcert_p_run / "votes.npy", np.load(flcert_p_run / "votes.npy") * 2)
    before = folder_state(flcert_p_run)
    with pytest.raises(ConfigError):
        recertify(flcert_p_run, overrides)
    assert folder_state(flcert_p_run) == before


# ------------------------------------------------------------------ a real run folder


@pytest.mark.slow
def test_certify_a_real_flcert_d_run(tmp_path):
    """A real FLCert-D run (with hash groups that may be empty): certify rebuilds N from the
    config, reproduces the run's certificate, and refuses what the run does not have."""
    overrides = [
        "ensemble=flcert_d",
        "ensemble.grouping=hash",
        "ensemble.num_groups=6",
        "engine=local",
        "engine.workers=1",
    ]
    summary = run(tiny_config(tmp_path, *overrides, name="d"))
    run_dir = tmp_path / "d"
    num_jobs = len(list((run_dir / "jobs").glob("job_*.pt")))
    assert np.load(run_dir / "votes.npy").sum(axis=1).tolist() == [num_jobs] * len(np.load(run_dir / "labels.npy"))
    again = recertify(run_dir, [])
    assert again["certified_accuracy"] == summary["certified_accuracy"]
    assert json.loads((run_dir / "certify" / "default" / "summary.json").read_text())["recertified_from"] == str(
        run_dir
    )
    before = folder_state(run_dir)
    with pytest.raises(ConfigError, match=r"^ensemble\.bounds: "):
        recertify(run_dir, ["ensemble.bounds=simultaneous"])
    votes = np.load(run_dir / "votes.npy")
    votes[0, 0] += 1
    write_npy(run_dir / "votes.npy", votes)
    with pytest.raises(ConfigError, match=rf"^votes\.npy: each input's votes must sum to N={num_jobs} "):
        recertify(run_dir, [])
    assert set(folder_state(run_dir)) == set(before)
