"""What a run writes about its jobs: metrics.json and accuracy.png cover every group of an ensemble."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedshield import run as pipeline
from helpers import tiny_config


def test_spread_over_groups_per_round():
    histories = [
        [{"round": 1, "accuracy": 0.2, "attack_success_rate": 0.5}, {"round": 2, "accuracy": 0.6}],
        [{"round": 1, "accuracy": 0.4, "attack_success_rate": 0.1}, {"round": 2, "accuracy": 0.6}],
        [{"round": 1, "accuracy": 0.9}, {"round": 2, "loss": 1.0}],  # round 2 not evaluated here
    ]
    first, second = pipeline.spread_over_groups(histories)
    assert first["round"] == 1 and first["num_groups"] == 3
    assert (first["accuracy_mean"], first["accuracy_min"], first["accuracy_max"]) == pytest.approx((0.5, 0.2, 0.9))
    assert first["accuracy_std"] == pytest.approx(np.sqrt(((0.3**2) + (0.1**2) + (0.4**2)) / 3))
    assert (first["attack_success_rate_min"], first["attack_success_rate_max"]) == (0.1, 0.5)
    assert second["num_groups"] == 2 and second["accuracy_std"] == 0.0
    assert "attack_success_rate_mean" not in second


@pytest.mark.slow
def test_ensemble_metrics_cover_every_group(tmp_path):
    overrides = ["ensemble=flcert_p", "ensemble.num_groups=3", "ensemble.group_size=3", "engine=local"]
    pipeline.run(
        tiny_config(tmp_path, *overrides, "engine.workers=1", "attack=backdoor", "attack.num_malicious=1", name="p")
    )
    run_dir = tmp_path / "p"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    histories = {
        job_id: torch.load(run_dir / "jobs" / f"job_{job_id:05d}.pt", weights_only=True)["history"]
        for job_id in range(3)
    }
    assert metrics["job_id"] == 0 and metrics["rounds"] == histories[0]  # job 0's keys are kept
    groups = metrics["groups"]
    assert groups["num_groups"] == 3 and groups["job_ids"] == [0, 1, 2]
    for record in groups["rounds"]:
        for key in ("accuracy", "attack_success_rate"):
            values = [r[key] for h in histories.values() for r in h if r["round"] == record["round"] and key in r]
            assert len(values) == 3
            assert record[f"{key}_min"] == min(values) and record[f"{key}_max"] == max(values)
            assert record[f"{key}_mean"] == pytest.approx(np.mean(values))
    assert [r["round"] for r in groups["rounds"]] == [1, 2]
    assert (run_dir / "accuracy.png").stat().st_size > 0
