"""A built wheel, not the editable checkout, composes a config and runs a job (#14, item 7).

The wheel is built from a copy of the sources with this environment's setuptools (no build
isolation, no index: nothing is downloaded), unpacked into a temporary folder, and imported
from there by a subprocess whose cwd lies outside the checkout, so neither the editable
install nor ``src/`` can stand in for the package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fedshield.config import CONFIG_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(
        REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    )
    wheelhouse = tmp_path / "wheelhouse"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
        + ["-w", str(wheelhouse), str(source)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = wheelhouse.glob("fedshield-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.mark.slow
def test_the_wheel_holds_every_config_file(wheel):
    shipped = {CONFIG_DIR.relative_to(CONFIG_DIR.parents[1]) / path for path in _yaml_files(CONFIG_DIR)}
    assert len(shipped) > 40 and Path("fedshield/conf/attack/backdoor.yaml") in shipped
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {Path(name) for name in archive.namelist() if name.endswith(".yaml")}
    assert shipped - in_wheel == set(), "config files missing from the wheel"


def _yaml_files(folder: Path) -> set[Path]:
    return {path.relative_to(folder) for path in folder.rglob("*.yaml")}


@pytest.mark.slow
def test_the_installed_wheel_composes_a_config_and_runs_a_job(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

    def python(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600
        )

    imported = python("-c", "import fedshield, fedshield.config as c; print(fedshield.__file__); print(c.CONFIG_DIR)")
    assert imported.returncode == 0, imported.stderr
    module_file, config_dir = (Path(line) for line in imported.stdout.split())
    assert module_file.is_relative_to(site), f"fedshield imported from {module_file}, not the wheel"
    assert config_dir.is_relative_to(site) and (config_dir / "config.yaml").is_file()

    run_dir = tmp_path / "run"
    overrides = ["dataset=mnist5k", "model=logistic", "num_clients=4", "num_rounds=1", "engine=local"]
    overrides += ["engine.workers=1", "sample_fraction=1.0", "client.local_steps=2", f"hydra.run.dir={run_dir}"]
    done = python("-m", "fedshield.cli", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_clients"] == 4 and summary["num_rounds"] == 1 and summary["engine"] == "local"
