"""Where data and results live (#14, item 8): default data roots come from FEDSHIELD_DATA (else
~/.cache/fedshield), and relative paths the user gives resolve against the folder they launched
the command from, once, before any worker sees the config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedshield.config import build_experiment, compose_config, experiment_from_yaml, with_absolute_paths
from fedshield.data import DatasetError
from helpers import TINY, write_tiny_mnist

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST = [*(o for o in TINY if not o.startswith(("dataset=", "num_clients="))), "dataset=mnist", "num_clients=4"]


def test_a_missing_default_root_says_how_to_point_at_the_data(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDSHIELD_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = compose_config(MNIST, output_dir=tmp_path / "run")
    with pytest.raises(Exception) as raised:  # Hydra's instantiate may wrap it
        build_experiment(cfg)
    message = str(_dataset_error(raised.value))
    assert message.startswith("dataset.root: ")
    assert "FEDSHIELD_DATA" in message and "dataset.root=DIR" in message
    assert message.endswith(f"got {str(tmp_path / '.cache' / 'fedshield' / 'mnist')!r}")


def _dataset_error(error: BaseException | None) -> DatasetError:
    while error is not None and not isinstance(error, DatasetError):
        error = error.__cause__
    assert error is not None, "no DatasetError in the chain"
    return error


def test_fedshield_data_is_the_folder_of_the_default_roots(tmp_path, monkeypatch):
    write_tiny_mnist(tmp_path / "datasets" / "mnist", num_samples=60)
    monkeypatch.setenv("FEDSHIELD_DATA", str(tmp_path / "datasets"))
    cfg = compose_config(MNIST, output_dir=tmp_path / "run")
    assert cfg.dataset.root == str(tmp_path / "datasets" / "mnist")
    experiment = build_experiment(cfg)
    assert len(experiment.train) + len(experiment.test) == 60


def test_every_dataset_with_a_root_defaults_under_fedshield_data(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDSHIELD_DATA", str(tmp_path))
    for name in ("mnist", "fashion_mnist", "cifar10", "har", "reddit"):
        root = compose_config([f"dataset={name}"], output_dir=tmp_path / "run").dataset.root
        assert root == str(tmp_path / name), name


def test_relative_paths_resolve_against_the_launch_folder_not_a_workers_cwd(tmp_path, monkeypatch):
    launch = tmp_path / "launch"
    write_tiny_mnist(launch / "data" / "mnist", num_samples=60)
    monkeypatch.chdir(launch)
    cfg = with_absolute_paths(compose_config([*MNIST, "dataset.root=data/mnist", "output_dir=runs/a"]))
    assert cfg.dataset.root == str(launch / "data" / "mnist")
    assert cfg.output_dir == str(launch / "runs" / "a")
    experiment = build_experiment(cfg)
    # A worker (Ray, a SuperNode's ClientApp) rebuilds the experiment from the YAML elsewhere.
    worker_cwd = tmp_path / "worker"
    worker_cwd.mkdir()
    monkeypatch.chdir(worker_cwd)
    experiment_from_yaml.cache_clear()
    rebuilt = experiment_from_yaml(experiment.config_yaml)
    assert rebuilt.test.y.tolist() == experiment.test.y.tolist()


def test_home_relative_and_absolute_paths_are_left_alone(tmp_path):
    cfg = compose_config([*MNIST, "dataset.root='~/data/mnist'"], output_dir=tmp_path / "run")
    resolved = with_absolute_paths(cfg, base=tmp_path / "elsewhere")
    assert resolved.dataset.root == "~/data/mnist", "each machine expands ~ to its own home"
    assert resolved.output_dir == str(tmp_path / "run")
    assert cfg.dataset.root == "~/data/mnist" and resolved is not cfg


@pytest.mark.slow
def test_the_cli_resolves_relative_paths_against_the_launch_folder_even_when_hydra_changes_dir(tmp_path):
    launch = tmp_path / "launch"
    write_tiny_mnist(launch / "data" / "mnist", num_samples=60)
    overrides = [*MNIST, "num_rounds=1", "engine=local", "engine.workers=1", "dataset.root=data/mnist"]
    # Hydra's run folder becomes the cwd: a path relative to it would miss the data.
    overrides += ["output_dir=runs/a", "hydra.job.chdir=true", f"hydra.run.dir={tmp_path / 'hydra'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "fedshield.cli", *overrides], cwd=launch, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = launch / "runs" / "a"
    assert json.loads((run_dir / "summary.json").read_text())["num_clients"] == 4
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.dataset.root == str(launch / "data" / "mnist") and saved.output_dir == str(run_dir)
