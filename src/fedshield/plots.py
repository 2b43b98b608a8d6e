"""Plots a person would rather look at than a CSV: accuracy over rounds, CA@m curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _save(figure, path: Path) -> None:
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=120, bbox_inches="tight")
    plt.close(figure)
    temporary.replace(path)


def plot_accuracy(
    history: Sequence[Mapping], path: Path, *, title: str, groups: Sequence[Mapping] | None = None
) -> None:
    """Clean accuracy (and attack success rate, when measured) against the round; with
    ``groups`` (per round ``<metric>_mean``/``_min``/``_max`` over an ensemble's groups) also
    the groups' mean as a dashed line and their min-max range as a band."""
    figure, axis = plt.subplots(figsize=(6, 4))
    suffix = "" if groups is None else " (job 0)"
    rounds = [r["round"] for r in history if "accuracy" in r]
    accuracy_line = axis.plot(
        rounds, [r["accuracy"] for r in history if "accuracy" in r], marker="o", label=f"clean accuracy{suffix}"
    )
    colors = {"accuracy": accuracy_line[0].get_color()}
    if any("attack_success_rate" in r for r in history):
        attack_line = axis.plot(
            rounds,
            [r["attack_success_rate"] for r in history if "accuracy" in r],
            marker="x",
            label=f"attack success rate{suffix}",
        )
        colors["attack_success_rate"] = attack_line[0].get_color()
    for key, name in (("accuracy", "clean accuracy"), ("attack_success_rate", "attack success rate")):
        measured = [r for r in groups or () if f"{key}_mean" in r]
        if not measured:
            continue
        group_rounds = [r["round"] for r in measured]
        color = colors.get(key)
        axis.plot(
            group_rounds, [r[f"{key}_mean"] for r in measured], linestyle="--", color=color, label=f"{name}, group mean"
        )
        axis.fill_between(
            group_rounds,
            [r[f"{key}_min"] for r in measured],
            [r[f"{key}_max"] for r in measured],
            color=color,
            alpha=0.2,
            label=f"{name}, group min-max",
        )
    axis.set_xlabel("round")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # no round 1.5
    axis.set_ylabel("rate")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(title)
    _save(figure, path)


def plot_ca_curves(curves: Mapping[str, Mapping[int, float]], path: Path, *, title: str) -> None:
    """Certified accuracy CA@m against m, one line per system (FLCert paper, Fig. 3 style)."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    styles = ["-", "--", "-.", ":"]
    for index, (label, curve) in enumerate(curves.items()):
        ms = sorted(curve)
        # Baselines certify only m = 0: markers keep overlapping short curves visible.
        marker = "o" if len(ms) <= 3 else None
        axis.step(
            ms, [curve[m] for m in ms], where="post", label=label, linestyle=styles[index % len(styles)], marker=marker
        )
    axis.set_xlabel("number of malicious clients m")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # m counts clients
    axis.set_ylabel("certified accuracy CA@m")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(title)
    _save(figure, path)


def plot_bars(groups: Mapping[str, Mapping[str, float]], path: Path, *, title: str) -> None:
    """Grouped bars: one group per run label, one bar per metric (e.g. accuracy and ASR)."""
    import numpy as np

    labels = list(groups)
    metrics = sorted({metric for values in groups.values() for metric in values})
    width = 0.8 / max(len(metrics), 1)
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4))
    positions = np.arange(len(labels))
    for index, metric in enumerate(metrics):
        axis.bar(positions + index * width, [groups[label].get(metric, 0.0) for label in labels], width, label=metric)
    axis.set_xticks(positions + width * (len(metrics) - 1) / 2, labels, rotation=30, ha="right")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3, axis="y")
    axis.legend()
    axis.set_title(title)
    _save(figure, path)
