"""A single `fedshield` run loads its data once: the preflight's build lends the run its data,
and the run's results are those of a run that loads its own."""

import sys

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

import fedshield.data
from fedshield import cli
from fedshield.run import run
from helpers import TINY, tiny_config

pytestmark = pytest.mark.slow

SINGLE_PROCESS = ["engine=local", "engine.workers=1"]


@pytest.fixture
def dataset_loads(monkeypatch):
    """Counts the loads of the embedded dataset (dataset=mnist5k)."""
    loads = []
    load = fedshield.data.load_mnist5k

    def counting_load(*args, **kwargs):
        loads.append(kwargs)
        return load(*args, **kwargs)

    monkeypatch.setattr(fedshield.data, "load_mnist5k", counting_load)
    return loads


def test_a_single_run_loads_its_data_once_with_unchanged_results(tmp_path, monkeypatch, dataset_loads):
    monkeypatch.setattr(sys, "argv", ["fedshield", *TINY, *SINGLE_PROCESS, f"output_dir={tmp_path / 'cli'}"])
    try:
        cli.main()
    finally:
        GlobalHydra.instance().clear()
    assert len(dataset_loads) == 1

    run(tiny_config(tmp_path, *SINGLE_PROCESS, name="direct"))
    for name in ("predictions.npy", "votes.npy", "labels.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "cli" / name), np.load(tmp_path / "direct" / name))
    cli_config = (tmp_path / "cli" / "config.yaml").read_text().replace(str(tmp_path / "cli"), "OUT")
    direct_config = (tmp_path / "direct" / "config.yaml").read_text().replace(str(tmp_path / "direct"), "OUT")
    assert cli_config == direct_config
