"""``fedshield report``: re-certifications are marked as such, and no run hides another in a legend."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedshield import report


def write_summary(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("seed: 0\n")
    summary = {"mode": "flcert_d", "N": 3, "n": 6, "strategy": "fedshield.rules.FedAvg", "attack": None, **fields}
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def plotted(monkeypatch):
    """What each figure of the report would show: file name -> {legend label: data}."""
    figures: dict[str, dict] = {}
    monkeypatch.setattr(report, "plot_ca_curves", lambda curves, path, title: figures.update({path.name: curves}))
    monkeypatch.setattr(report, "plot_bars", lambda groups, path, title: figures.update({path.name: groups}))
    return figures


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Two FedAvg runs with the same legend label (seeds 0 and 1), a Median run, and a
    re-certification of the first run in its certify/ folder."""
    root = tmp_path / "sweep"
    write_summary(root / "seed0", certified_accuracy={"0": 0.9, "1": 0.5})
    write_summary(root / "seed1", certified_accuracy={"0": 0.8, "1": 0.3})
    write_summary(root / "median", strategy="fedshield.rules.Median", certified_accuracy={"0": 0.7, "1": 0.2})
    write_summary(
        root / "seed0" / "certify" / "default",
        certified_accuracy={"0": 0.9, "1": 0.5},
        recertified_from="/elsewhere/seed0",  # the folder was moved since it was certified
        overrides=[],
    )
    (root / "seed0" / "certify" / "default" / "config.yaml").unlink()
    return root


def test_runs_with_the_same_label_both_appear_in_the_figure(sweep, plotted):
    report.make_report(sweep)
    curves = plotted["ca_by_rule.png"]
    assert len(curves) == 3, curves
    assert sorted(curve[1] for curve in curves.values()) == [0.2, 0.3, 0.5]
    fedavg = sorted(label for label in curves if "FedAvg" in label)
    assert fedavg == ["flcert_d, FedAvg, N=3 [seed0]", "flcert_d, FedAvg, N=3 [seed1]"]


def test_a_recertification_is_a_csv_row_naming_its_run_and_is_left_out_of_the_figures(sweep, plotted):
    report.make_report(sweep)
    with open(sweep / "report.csv") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    assert rows["seed0/certify/default"]["recertifies"] == "seed0"
    assert rows["seed0/certify/default"]["overrides"] == "default"
    assert rows["seed0"]["recertifies"] == ""
    assert not any("certify" in label for label in plotted["ca_by_rule.png"])


def test_backdoor_bars_keep_every_run(tmp_path, plotted):
    backdoor = {"attack": "fedshield.attacks.Backdoor", "num_malicious": 1, "certified_accuracy": {"0": 0.5}}
    write_summary(tmp_path / "a", final_accuracy=0.9, final_attack_success_rate=0.1, **backdoor)
    write_summary(tmp_path / "b", final_accuracy=0.7, final_attack_success_rate=0.6, **backdoor)
    report.make_report(tmp_path)
    bars = plotted["backdoor_bars.png"]
    assert sorted(values["attack success rate"] for values in bars.values()) == [0.1, 0.6]
