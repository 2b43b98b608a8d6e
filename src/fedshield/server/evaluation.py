"""Centralized evaluation of a global model: clean accuracy, loss and attack success rate."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from fedshield.experiment import Experiment
from fedshield.flip.rejection import flip_roc, plot_flip, tau_sweep
from fedshield.task.metrics import attack_success_rate
from fedshield.task.training import predict_logits


def triggered_test_set(experiment: Experiment) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stamped test inputs and their true labels (None without a backdoor).

    Image backdoors keep only inputs whose true label is not the target; the text backdoor
    keeps every trigger sentence (its ``success_rate_excludes_target`` is False).
    """
    attack = experiment.attack
    if attack.target_label is None:
        return None
    x, y = experiment.test_tensors
    if attack.success_rate_excludes_target:
        keep = y != attack.target_label
        x, y = x[keep], y[keep]
    return attack.stamp(x), y


def _evaluation_model(experiment: Experiment, params: torch.Tensor) -> torch.nn.Module:
    """``params`` in this thread's reused module when it lives on the server's device: building a
    fresh module per evaluation took 1.5 ms, 0.75 s of CPU for N = 500 groups (the same forward, so
    the same logits); a fresh module otherwise."""
    if experiment.client_device == experiment.device:
        return experiment.work_model(params)
    return experiment.model_from_params(params)


def evaluate_params(experiment: Experiment, params: torch.Tensor) -> dict[str, float]:
    """Accuracy and loss on the test set; attack success rate when the attack has a trigger.

    With FLIP's rejection (tau > 0), ``accuracy`` and ``attack_success_rate`` count a rejected
    input as wrong / not a success, and the rejections and the detector's ROC AUC are added;
    the unrejected values stay as ``raw_accuracy`` and ``raw_attack_success_rate``.
    """
    return evaluate_with_predictions(experiment, params)[0]


def evaluate_with_predictions(experiment: Experiment, params: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """:func:`evaluate_params` and the model's predicted test labels (argmax of the logits,
    int64), from the same single pass over the test set: a job's final evaluation gives its votes."""
    x, y = experiment.test_tensors
    model = _evaluation_model(experiment, params)
    logits = predict_logits(model, x)
    predictions = logits.argmax(1).cpu()
    metrics = {
        "accuracy": float((logits.argmax(1) == y).double().mean()),
        "test_loss": float(F.cross_entropy(logits.double(), y)),
    }
    triggered = triggered_test_set(experiment)
    target = experiment.attack.target_label
    if triggered is None or target is None:
        return metrics, predictions
    stamped_x, stamped_y = triggered
    triggered_logits = predict_logits(model, stamped_x)
    metrics["attack_success_rate"] = attack_success_rate(
        triggered_logits.argmax(1),
        stamped_y,
        target_label=target,
        exclude_target=experiment.attack.success_rate_excludes_target,
    )
    if experiment.rejection is not None:
        flip = experiment.rejection.metrics(logits, y, triggered_logits, stamped_y, target_label=target)
        metrics["raw_accuracy"] = metrics["accuracy"]
        metrics["raw_attack_success_rate"] = metrics["attack_success_rate"]
        # Counts stay integers (rejected_clean, num_triggered, ...); rates are floats.
        metrics.update({key: value if isinstance(value, int) else float(value) for key, value in flip.items()})
        metrics["accuracy"] = metrics.pop("clean_accuracy")
    return metrics, predictions


def write_backdoor_plot(experiment: Experiment, params: torch.Tensor, path: Path) -> dict[str, float] | None:
    """FLIP's view of a backdoored model: ROC of confidence as a trigger detector, and clean
    accuracy / attack success rate against the rejection threshold tau. None without a trigger."""
    triggered = triggered_test_set(experiment)
    target = experiment.attack.target_label
    if triggered is None or target is None:
        return None
    x, y = experiment.test_tensors
    model = experiment.model_from_params(params)
    clean_logits = predict_logits(model, x)
    stamped_x, stamped_y = triggered
    triggered_logits = predict_logits(model, stamped_x)
    sweep = tau_sweep(
        clean_logits, y, triggered_logits, stamped_y, target_label=target, taus=[i / 20 for i in range(20)]
    )
    roc = flip_roc(clean_logits, triggered_logits, stamped_y, target_label=target)
    plot_flip(sweep, roc, path)
    return {"roc_auc": float(roc["auc"])}
