"""FLIP's low-confidence rejection and its accounting, checked on hand-built logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedshield.flip.rejection import (
    RejectionError,
    flip_metrics,
    flip_roc,
    plot_flip,
    reject_low_confidence,
    roc_auc,
    roc_curve,
    softmax_confidence,
    tau_sweep,
)

TARGET = 0


def logits_with_confidence(label: int, confidence: float, *, num_classes: int = 3) -> list[float]:
    """Logits whose softmax gives ``confidence`` to ``label`` and splits the rest evenly."""
    rest = (1.0 - confidence) / (num_classes - 1)
    return [math.log(confidence) if k == label else math.log(rest) for k in range(num_classes)]


@pytest.fixture
def hand_built():
    # Clean: correct and confident, correct but unsure, wrong and confident, correct and confident.
    clean_logits = torch.tensor(
        [
            logits_with_confidence(1, 0.9),
            logits_with_confidence(2, 0.5),
            logits_with_confidence(1, 0.8),
            logits_with_confidence(0, 0.95),
        ],
        dtype=torch.float64,
    )
    clean_labels = torch.tensor([1, 2, 2, 0])
    # Triggered: 5 inputs; the last has the target as true label and is left out.
    triggered_logits = torch.tensor(
        [
            logits_with_confidence(TARGET, 0.99),  # confident success
            logits_with_confidence(TARGET, 0.6),  # unsure success
            logits_with_confidence(TARGET, 0.45),  # unsure success
            logits_with_confidence(1, 0.7),  # attack failed
            logits_with_confidence(TARGET, 0.99),  # true label is the target: not counted
        ],
        dtype=torch.float64,
    )
    triggered_labels = torch.tensor([1, 2, 1, 1, TARGET])
    return clean_logits, clean_labels, triggered_logits, triggered_labels


def test_confidence_is_the_top_softmax_probability(hand_built):
    clean_logits = hand_built[0]
    torch.testing.assert_close(
        softmax_confidence(clean_logits), torch.tensor([0.9, 0.5, 0.8, 0.95], dtype=torch.float64)
    )


def test_threshold_zero_rejects_nothing(hand_built):
    metrics = flip_metrics(*hand_built, target_label=TARGET, tau=0.0)
    assert metrics["rejected_clean"] == 0 and metrics["rejected_triggered"] == 0
    assert metrics["clean_accuracy"] == 3 / 4
    assert metrics["attack_success_rate"] == 3 / 4
    assert metrics["num_clean"] == 4 and metrics["num_triggered"] == 4


def test_counts_at_a_threshold_match_a_hand_count(hand_built):
    metrics = flip_metrics(*hand_built, target_label=TARGET, tau=0.65)
    # Clean: input 2 (0.5) is rejected, so only inputs 1 and 4 count as correct.
    assert metrics["rejected_clean"] == 1
    assert metrics["clean_accuracy"] == 2 / 4
    # Triggered: 0.6 and 0.45 are rejected; only the 0.99 success remains.
    assert metrics["rejected_triggered"] == 2
    assert metrics["attack_success_rate"] == 1 / 4


def test_reject_low_confidence_uses_strict_inequality():
    logits = torch.tensor([logits_with_confidence(1, 0.75, num_classes=2)], dtype=torch.float64)
    predictions, rejected = reject_low_confidence(logits, tau=0.75 - 1e-12)
    assert predictions.tolist() == [1] and rejected.tolist() == [False]
    _, rejected = reject_low_confidence(logits, tau=0.75 + 1e-12)
    assert rejected.tolist() == [True]


def test_auc_is_one_for_separated_and_one_half_for_identical_scores():
    assert roc_auc(positive_scores=np.array([0.6, 0.7, 0.9]), negative_scores=np.array([0.1, 0.2, 0.5])) == 1.0
    assert roc_auc(positive_scores=np.array([0.1, 0.2]), negative_scores=np.array([0.6, 0.7])) == 0.0
    assert roc_auc(positive_scores=np.full(5, 0.3), negative_scores=np.full(7, 0.3)) == 0.5


def test_auc_counts_ties_one_half_as_mann_whitney_does():
    positive, negative = np.array([0.2, 0.5, 0.5, 0.9]), np.array([0.1, 0.5, 0.7])
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    assert roc_auc(positive_scores=positive, negative_scores=negative) == pytest.approx(np.mean(pairs))


def test_trapezoidal_area_of_the_curve_equals_the_rank_auc():
    generator = np.random.default_rng(0)
    positive = np.round(generator.normal(0.5, 1.0, 40), 1)  # rounding makes ties
    negative = np.round(generator.normal(0.0, 1.0, 60), 1)
    fpr, tpr, _ = roc_curve(positive_scores=positive, negative_scores=negative)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(positive_scores=positive, negative_scores=negative))


def test_flip_metrics_auc_detects_low_confidence_triggered_inputs(hand_built):
    clean_logits, clean_labels, _, _ = hand_built
    triggered = torch.tensor([logits_with_confidence(TARGET, 0.4)] * 3, dtype=torch.float64)
    metrics = flip_metrics(
        clean_logits,
        clean_labels,
        triggered,
        torch.tensor([1, 1, 2]),
        target_label=TARGET,
        tau=0.0,
    )
    assert metrics["roc_auc"] == 1.0  # every triggered input is less confident than every clean one


def test_sweep_and_plot(hand_built, tmp_path):
    sweep = tau_sweep(*hand_built, target_label=TARGET, taus=[0.0, 0.65, 1.0])
    np.testing.assert_allclose(sweep["clean_accuracy"], [3 / 4, 2 / 4, 0.0])
    np.testing.assert_allclose(sweep["attack_success_rate"], [3 / 4, 1 / 4, 0.0])
    roc = flip_roc(hand_built[0], hand_built[2], hand_built[3], target_label=TARGET)
    path = plot_flip(sweep, roc, tmp_path / "flip.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("tau", [-0.1, 1.1])
def test_tau_out_of_range_is_rejected(hand_built, tau):
    with pytest.raises(RejectionError, match="tau"):
        flip_metrics(*hand_built, target_label=TARGET, tau=tau)
