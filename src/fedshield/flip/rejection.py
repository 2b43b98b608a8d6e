r"""FLIP's inference-time rejection of low-confidence inputs, and the metrics that account for it.

FLIP [Zhang et al., ICLR 2023] observes that hardening lowers the global model's
confidence on backdoor samples more than on clean ones (Theorem 1 bounds the change of their
loss), so the server rejects an input whose top softmax probability is below a threshold
:math:`\tau`:

.. math:: \text{reject}(x) \iff \max_k \operatorname{softmax}(f(x))_k < \tau .

Accounting follows FLIP's evaluation code (``test.py``): a rejected clean input counts as
misclassified, and a rejected triggered input counts as a failed attack. The attack success
rate is measured on triggered inputs whose true label is not the target (a target-label
input classified as the target is no success of the attack). :math:`\tau = 0` rejects nothing.

The confidence also serves as a detector of triggered inputs; :func:`roc_auc` gives its
area under the ROC curve with score :math:`1 - \text{confidence}` (Mann-Whitney form, ties
counted one half), computed here without scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from fedshield.task.metrics import attack_success_rate


class RejectionError(ValueError):
    """A rejection threshold tau out of [0, 1], or logits and labels that do not match."""


def _check_tau(tau: float) -> None:
    if not 0.0 <= tau <= 1.0:
        raise RejectionError(f"tau must be in [0, 1]; got {tau}")


def _check_logits(logits: torch.Tensor, labels: torch.Tensor | None = None, *, name: str) -> None:
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise RejectionError(f"{name} logits must be (N, L) with L >= 2; got shape {tuple(logits.shape)}")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(logits)):
        raise RejectionError(f"{name} labels must have shape ({len(logits)},); got {tuple(labels.shape)}")


def softmax_confidence(logits: torch.Tensor) -> torch.Tensor:
    """Top softmax probability of each row of (N, L) ``logits``, in float64."""
    _check_logits(logits, name="input")
    return torch.softmax(logits.double(), dim=1).max(dim=1).values


def reject_low_confidence(logits: torch.Tensor, *, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and rejection mask: reject when the top softmax probability < ``tau``.

    Returns
    -------
    predictions : torch.Tensor
        (N,) argmax labels (also for rejected rows, for inspection).
    rejected : torch.Tensor
        (N,) bool, ``confidence < tau``; all False when ``tau == 0``.
    """
    _check_tau(tau)
    confidence = softmax_confidence(logits)
    return logits.argmax(dim=1), confidence < tau


def roc_auc(*, positive_scores: np.ndarray | torch.Tensor, negative_scores: np.ndarray | torch.Tensor) -> float:
    r"""Area under the ROC curve, :math:`P(s^+ > s^-) + \tfrac12 P(s^+ = s^-)` (Mann-Whitney U).

    .. math:: \mathrm{AUC} = \frac{R^+ - n^+(n^+ + 1)/2}{n^+ n^-}

    with :math:`R^+` the sum of the positives' ranks among all scores (ties get their average
    rank). Equals the trapezoidal area under :func:`roc_curve`.
    """
    positive = np.asarray(positive_scores, dtype=np.float64).ravel()
    negative = np.asarray(negative_scores, dtype=np.float64).ravel()
    if len(positive) == 0 or len(negative) == 0:
        raise RejectionError(f"roc_auc needs positives and negatives; got {len(positive)} and {len(negative)}")
    ranks = rankdata(np.concatenate([positive, negative]), method="average")
    rank_sum = ranks[: len(positive)].sum()
    return float((rank_sum - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative)))


def roc_curve(
    *, positive_scores: np.ndarray | torch.Tensor, negative_scores: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points of the detector "score >= c" for every distinct score c, from (0, 0) to (1, 1).

    Returns ``(false_positive_rate, true_positive_rate, cutoffs)``; tied scores form one
    diagonal segment, so the trapezoidal area equals :func:`roc_auc`.
    """
    positive = np.asarray(positive_scores, dtype=np.float64).ravel()
    negative = np.asarray(negative_scores, dtype=np.float64).ravel()
    if len(positive) == 0 or len(negative) == 0:
        raise RejectionError(f"roc_curve needs positives and negatives; got {len(positive)} and {len(negative)}")
    cutoffs = np.unique(np.concatenate([positive, negative]))[::-1]
    true_positive = np.array([(positive >= cutoff).sum() for cutoff in cutoffs]) / len(positive)
    false_positive = np.array([(negative >= cutoff).sum() for cutoff in cutoffs]) / len(negative)
    return (
        np.concatenate([[0.0], false_positive]),
        np.concatenate([[0.0], true_positive]),
        np.concatenate([[np.inf], cutoffs]),
    )


def _attack_rows(triggered_true_labels: torch.Tensor, target_label: int) -> torch.Tensor:
    return triggered_true_labels != target_label


def flip_metrics(
    clean_logits: torch.Tensor,
    clean_labels: torch.Tensor,
    triggered_logits: torch.Tensor,
    triggered_true_labels: torch.Tensor,
    *,
    target_label: int,
    tau: float,
) -> dict[str, float]:
    """Clean accuracy, attack success and rejections under FLIP's rejection threshold ``tau``.

    Triggered inputs whose true label is ``target_label`` are left out of every triggered
    statistic (attack success, rejections, and the positives of the ROC).

    Returns
    -------
    dict
        ``clean_accuracy`` (rejected clean inputs count as wrong), ``attack_success_rate``
        (rejected triggered inputs count as failures), ``rejected_clean`` and
        ``rejected_triggered`` (counts), ``num_clean``, ``num_triggered``, and ``roc_auc`` of
        ``1 - confidence`` as a detector of triggered inputs (NaN when either set is empty).
    """
    _check_tau(tau)
    _check_logits(clean_logits, clean_labels, name="clean")
    _check_logits(triggered_logits, triggered_true_labels, name="triggered")
    keep = _attack_rows(triggered_true_labels, target_label)
    triggered_logits = triggered_logits[keep]
    clean_predictions, clean_rejected = reject_low_confidence(clean_logits, tau=tau)
    triggered_predictions, triggered_rejected = reject_low_confidence(triggered_logits, tau=tau)
    clean_correct = (clean_predictions == clean_labels) & ~clean_rejected
    num_clean, num_triggered = len(clean_labels), int(keep.sum())
    auc = float("nan")
    if num_clean and num_triggered:
        auc = roc_auc(
            positive_scores=1.0 - softmax_confidence(triggered_logits).numpy(),
            negative_scores=1.0 - softmax_confidence(clean_logits).numpy(),
        )
    return {
        "clean_accuracy": float(clean_correct.double().mean()) if num_clean else float("nan"),
        "attack_success_rate": attack_success_rate(
            triggered_predictions, triggered_true_labels[keep], target_label=target_label, rejected=triggered_rejected
        )
        if num_triggered
        else float("nan"),
        "rejected_clean": int(clean_rejected.sum()),
        "rejected_triggered": int(triggered_rejected.sum()),
        "num_clean": num_clean,
        "num_triggered": num_triggered,
        "roc_auc": auc,
    }


def tau_sweep(
    clean_logits: torch.Tensor,
    clean_labels: torch.Tensor,
    triggered_logits: torch.Tensor,
    triggered_true_labels: torch.Tensor,
    *,
    target_label: int,
    taus: Sequence[float],
) -> dict[str, np.ndarray]:
    """:func:`flip_metrics` for each tau; arrays keyed by metric name (and ``tau``)."""
    if len(taus) == 0:
        raise RejectionError("tau_sweep needs at least one tau")
    rows = [
        flip_metrics(
            clean_logits,
            clean_labels,
            triggered_logits,
            triggered_true_labels,
            target_label=target_label,
            tau=float(tau),
        )
        for tau in taus
    ]
    sweep = {key: np.array([row[key] for row in rows]) for key in rows[0] if key != "roc_auc"}
    sweep["tau"] = np.asarray(taus, dtype=np.float64)
    return sweep


def flip_roc(
    clean_logits: torch.Tensor,
    triggered_logits: torch.Tensor,
    triggered_true_labels: torch.Tensor,
    *,
    target_label: int,
) -> dict[str, np.ndarray | float]:
    """ROC of ``1 - confidence`` as a detector of triggered inputs: ``fpr``, ``tpr``, ``auc``."""
    keep = _attack_rows(triggered_true_labels, target_label)
    positive = 1.0 - softmax_confidence(triggered_logits[keep]).numpy()
    negative = 1.0 - softmax_confidence(clean_logits).numpy()
    fpr, tpr, _ = roc_curve(positive_scores=positive, negative_scores=negative)
    return {
        "fpr": fpr,
        "tpr": tpr,
        "auc": roc_auc(positive_scores=positive, negative_scores=negative),
    }


def plot_flip(metrics_sweep: dict[str, np.ndarray], roc: dict[str, np.ndarray | float], path: str | Path) -> Path:
    """Save a PNG: the detector's ROC curve (left) and accuracy / ASR against tau (right).

    Draws on a bare ``matplotlib.figure.Figure`` (Agg canvas), so no pyplot state or
    interactive backend is touched.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(10, 4))
    left, right = figure.subplots(1, 2)
    left.plot(roc["fpr"], roc["tpr"], label=f"1 - confidence (AUC = {float(roc['auc']):.3f})")
    left.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    left.set_xlabel("false positive rate (clean inputs rejected)")
    left.set_ylabel("true positive rate (triggered inputs rejected)")
    left.set_title("FLIP confidence as a backdoor detector")
    left.legend(loc="lower right")
    taus = metrics_sweep["tau"]
    right.plot(taus, metrics_sweep["clean_accuracy"], marker="o", label="clean accuracy")
    right.plot(taus, metrics_sweep["attack_success_rate"], marker="s", label="attack success rate")
    right.set_xlabel(r"confidence threshold $\tau$")
    right.set_ylabel("rate")
    right.set_ylim(-0.02, 1.02)
    right.set_title("Rejection of low-confidence inputs")
    right.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    return path


@dataclass(frozen=True)
class ConfidenceRejection:
    """FLIP's server side: reject a prediction whose top softmax probability is below ``tau``.

    The server's half of FLIP's two-sided interface (the client's half is
    :class:`~fedshield.flip.client.FlipHardening`); built from the same
    :class:`~fedshield.flip.config.FlipConfig`.
    """

    tau: float

    def __post_init__(self) -> None:
        _check_tau(self.tau)

    def metrics(
        self,
        clean_logits: torch.Tensor,
        clean_labels: torch.Tensor,
        triggered_logits: torch.Tensor,
        triggered_true_labels: torch.Tensor,
        *,
        target_label: int,
    ) -> dict[str, float]:
        """:func:`flip_metrics` at this ``tau``."""
        return flip_metrics(
            clean_logits, clean_labels, triggered_logits, triggered_true_labels, target_label=target_label, tau=self.tau
        )
