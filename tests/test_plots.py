"""Figures: integer axes get integer ticks; an ensemble's accuracy shows every group."""

from __future__ import annotations

import numpy as np
import pytest

from fedshield import plots


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures the plot functions save, kept open for inspection instead of written."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure))
    yield figures
    for figure in figures:
        plots.plt.close(figure)


def visible_ticks(axis) -> np.ndarray:
    low, high = axis.get_xlim()
    ticks = axis.get_xticks()
    return ticks[(ticks >= low) & (ticks <= high)]


def test_rounds_axis_has_only_integer_ticks(tmp_path, saved_figures):
    history = [{"round": 1, "accuracy": 0.3}, {"round": 2, "accuracy": 0.5}]
    plots.plot_accuracy(history, tmp_path / "accuracy.png", title="two rounds")
    ticks = visible_ticks(saved_figures[0].axes[0])
    assert len(ticks) >= 2
    np.testing.assert_array_equal(ticks, np.round(ticks))


def test_malicious_clients_axis_has_only_integer_ticks(tmp_path, saved_figures):
    plots.plot_ca_curves({"flcert_d": {0: 0.9, 1: 0.6, 2: 0.1}}, tmp_path / "ca.png", title="N=3")
    ticks = visible_ticks(saved_figures[0].axes[0])
    assert len(ticks) >= 2
    np.testing.assert_array_equal(ticks, np.round(ticks))


def test_ensemble_accuracy_shows_the_groups_range_as_a_band(tmp_path, saved_figures):
    history = [{"round": 1, "accuracy": 0.3}, {"round": 2, "accuracy": 0.5}]
    groups = [
        {"round": 1, "accuracy_mean": 0.3, "accuracy_min": 0.1, "accuracy_max": 0.45},
        {"round": 2, "accuracy_mean": 0.5, "accuracy_min": 0.35, "accuracy_max": 0.8},
    ]
    plots.plot_accuracy(history, tmp_path / "accuracy.png", title="ensemble", groups=groups)
    axis = saved_figures[0].axes[0]
    (band,) = axis.collections
    vertices = band.get_paths()[0].vertices
    for record in groups:  # the band reaches each round's min and max
        at_round = vertices[vertices[:, 0] == record["round"], 1]
        assert at_round.min() == pytest.approx(record["accuracy_min"])
        assert at_round.max() == pytest.approx(record["accuracy_max"])
    mean_line = [line for line in axis.lines if line.get_label() == "clean accuracy, group mean"]
    assert [list(y) for y in (mean_line[0].get_ydata(),)] == [[0.3, 0.5]]
