"""The attack success rate: the one implementation every evaluation path uses."""

from __future__ import annotations

import numpy as np
import torch


class MetricError(ValueError):
    """Predictions, labels or masks whose shapes do not match."""


def _to_numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def attack_success_rate(
    predictions: torch.Tensor | np.ndarray,
    true_labels: torch.Tensor | np.ndarray,
    *,
    target_label: int,
    exclude_target: bool = True,
    rejected: torch.Tensor | np.ndarray | None = None,
) -> float:
    r"""Share of triggered inputs that the model labels as the attacker's target.

    .. math::

        \mathrm{ASR} = \frac{|\{i \in E : \hat{y}_i = t,\ i \text{ not rejected}\}|}{|E|},
        \qquad E = \{i : y_i \ne t\}

    With ``exclude_target`` (image backdoors), inputs whose true label already is the target
    :math:`t` are left out of :math:`E`: classifying them as :math:`t` is no success of the
    attack. Without it (the word-prediction backdoor) :math:`E` is every input. A ``rejected``
    input (FLIP's server-side rejection) counts as a failed attack.

    Parameters
    ----------
    predictions : Tensor or ndarray
        Predicted labels ``(N,)``, or logits ``(N, L)`` (then the arg max is the prediction), on
        the *triggered* inputs.
    true_labels : Tensor or ndarray
        True labels ``(N,)``.
    target_label : int
    exclude_target : bool
    rejected : Tensor or ndarray, optional
        ``(N,)`` booleans: the prediction was rejected.

    Raises
    ------
    MetricError
        If the shapes disagree or :math:`E` is empty.
    """
    predicted = _to_numpy(predictions)
    labels = _to_numpy(true_labels)
    if predicted.ndim == 2:
        predicted = predicted.argmax(axis=1)
    if predicted.ndim != 1 or predicted.shape != labels.shape:
        raise MetricError(
            "predictions must have shape (N,) or (N, num_classes) matching true_labels (N,); "
            f"got {_to_numpy(predictions).shape} and {labels.shape}"
        )
    succeeded = predicted == target_label
    if rejected is not None:
        rejected_mask = _to_numpy(rejected).astype(bool)
        if rejected_mask.shape != labels.shape:
            raise MetricError(f"rejected must have shape {labels.shape}; got {rejected_mask.shape}")
        succeeded &= ~rejected_mask
    eligible = labels != target_label if exclude_target else np.ones(labels.shape, dtype=bool)
    if not eligible.any():
        if not exclude_target:
            raise MetricError("attack_success_rate needs at least one triggered input; got none")
        raise MetricError(
            f"attack_success_rate needs an input whose true label is not target_label="
            f"{target_label}; got {len(labels)} inputs, all of the target label"
        )
    return float(np.mean(succeeded[eligible]))


def mean_over_last_rounds(history: list[dict], key: str, *, last_round: int, window: int = 10) -> float | None:
    """Mean of ``key`` over the evaluated rounds among the last ``window`` rounds.

    A single round's attack success rate swings (6% to 87% between two rounds was seen under a
    continuous backdoor), so the FLIP tables report this mean beside the final round's value.
    Rounds ``last_round - window + 1 .. last_round`` that recorded ``key`` count; None when none
    did (e.g. ``eval_every`` larger than the window, or no trigger to measure).
    """
    if window < 1:
        raise MetricError(f"window must be >= 1; got {window}")
    values = [
        float(record[key])
        for record in history
        if record.get(key) is not None and last_round - window < int(record["round"]) <= last_round
    ]
    return sum(values) / len(values) if values else None
