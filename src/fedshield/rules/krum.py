"""Krum and Multi-Krum [Blanchard et al., 2017].

Each update is scored by the sum of squared distances to its ``n - f - 2`` nearest other
updates; Krum returns the lowest-scoring update, Multi-Krum the mean of the ``num_selected``
lowest-scoring ones. The precondition ``n >= 2f + 3`` is checked and violations raise
:class:`~fedshield.rules.errors.ByzantineBudgetError` (Flower's ``select_multikrum``
instead clamps the neighbour count to ``max(1, n - f - 2)``).

Blanchard, El Mhamdi, Guerraoui, Stainer. "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent." NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedshield.rules.base import (
    AggregationRule,
    ClientBudget,
    check_updates,
    require_integer,
)


def _budget(rule: str, num_malicious: int, num_selected: int) -> ClientBudget:
    require_integer("num_malicious", num_malicious, minimum=0)
    require_integer("num_selected", num_selected, minimum=1)
    if num_selected == 1:
        return ClientBudget(rule, 2 * num_malicious + 3, "2 * num_malicious + 3", {"num_malicious": num_malicious})
    return ClientBudget(
        rule,
        max(2 * num_malicious + 3, num_selected),
        "max(2 * num_malicious + 3, num_selected)",
        {"num_malicious": num_malicious, "num_selected": num_selected},
    )


def squared_distances_to(points: Tensor, point: Tensor) -> Tensor:
    r""":math:`\|x_i - p\|_2^2` for every row :math:`x_i` of ``points``, as a sum of squared differences."""
    return (points - point).square().sum(dim=1)


def pairwise_squared_distances(updates: Tensor) -> Tensor:
    r"""Matrix of :math:`\|x_i - x_j\|_2^2`, computed from the differences in float64.

    The norm expansion :math:`\|x\|^2 + \|y\|^2 - 2\langle x, y\rangle` (Flower's
    ``compute_distances``) cancels catastrophically for nearby updates and can go negative;
    here every entry is a sum of squares, so it is >= 0, exactly 0 on the diagonal and exactly
    symmetric. Memory is ``O(num_clients * num_params)``.

    Parameters
    ----------
    updates : Tensor
        Shape ``(num_clients, num_params)``.

    Returns
    -------
    Tensor
        Shape ``(num_clients, num_clients)``, float64.
    """
    points = updates.to(torch.float64)
    distances = torch.empty((points.shape[0], points.shape[0]), dtype=torch.float64, device=points.device)
    for row, point in enumerate(points):
        distances[row] = squared_distances_to(points, point)
    return distances


def krum_scores(squared_distances: Tensor, *, num_neighbours: int) -> Tensor:
    r"""Krum score of each point: the sum of its ``num_neighbours`` smallest distances to others.

    .. math:: s(i) = \sum_{j \in N_i} \|x_i - x_j\|_2^2

    where :math:`N_i` are the ``num_neighbours`` nearest points to :math:`x_i` other than
    itself. The distances are summed in increasing order, so the score of a point does not
    depend on the order of the clients.

    Parameters
    ----------
    squared_distances : Tensor
        Shape ``(m, m)``, from :func:`pairwise_squared_distances`.
    num_neighbours : int
        Between 0 and ``m - 1``.
    """
    others = squared_distances.clone()
    others.fill_diagonal_(float("inf"))
    nearest = torch.sort(others, dim=1).values[:, :num_neighbours]
    return nearest.sum(dim=1)


def krum(updates: Tensor, *, num_malicious: int, num_selected: int = 1) -> Tensor:
    r"""Krum (``num_selected = 1``) or Multi-Krum [Blanchard et al., 2017].

    .. math::

        s(i) = \sum_{j \in N_i} \|x_i - x_j\|_2^2, \quad |N_i| = n - f - 2,

    where :math:`N_i` are the :math:`n - f - 2` nearest updates to :math:`x_i` (excluding
    itself), :math:`n` = num_clients and :math:`f` = ``num_malicious``. Krum returns
    :math:`x_{i^*}` with :math:`i^* = \arg\min_i s(i)`; Multi-Krum returns the mean of the
    ``num_selected`` updates with the lowest scores.

    Ties between equal scores are broken toward the lower row index, so the result is
    deterministic; it does not depend on the order of the clients unless two distinct updates
    tie (which always happens between mutual nearest neighbours when ``n - f - 2 = 1``).

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``(num_clients, num_params)``, floating dtype.
    num_malicious : int
        Assumed number of Byzantine clients, :math:`f \ge 0`.
    num_selected : int
        Number of lowest-score updates averaged, :math:`m \ge 1`; 1 is Krum.

    Returns
    -------
    Tensor
        Shape ``(num_params,)``, dtype of ``updates``. For Krum a copy of the selected update.

    Raises
    ------
    ByzantineBudgetError
        If ``n < 2 * num_malicious + 3`` or ``n < num_selected``.
    """
    num_clients = check_updates(updates)
    _budget("krum", num_malicious, num_selected).check(num_clients)
    scores = krum_scores(pairwise_squared_distances(updates), num_neighbours=num_clients - num_malicious - 2)
    selected = torch.sort(scores, stable=True).indices[:num_selected]
    return updates[selected].to(torch.float64).mean(dim=0).to(updates.dtype)


class Krum(AggregationRule):
    """Krum as an :class:`AggregationRule`; ignores ``weights``.

    Parameters
    ----------
    num_malicious : int
        Assumed number of Byzantine clients.
    num_selected : int
        Number of lowest-score updates averaged (1 is Krum, more is Multi-Krum).
    """

    name = "krum"

    def __init__(self, num_malicious: int, num_selected: int = 1) -> None:
        self.num_malicious = num_malicious
        self.num_selected = num_selected
        self.budget()  # validates the parameters

    def budget(self) -> ClientBudget:
        """``n >= 2 * num_malicious + 3`` (and ``n >= num_selected`` for Multi-Krum)."""
        return _budget(self.name, self.num_malicious, self.num_selected)

    def aggregate(
        self,
        updates: Tensor,
        *,
        weights: Tensor,
        client_ids: Sequence[int],
        server_update: Tensor | None = None,
    ) -> Tensor:
        """Return :func:`krum` of ``updates``; the other arguments are unused."""
        return krum(updates, num_malicious=self.num_malicious, num_selected=self.num_selected)


class MultiKrum(Krum):
    """Multi-Krum: the mean of the ``num_selected`` lowest-score updates; ignores ``weights``.

    Parameters
    ----------
    num_malicious : int
        Assumed number of Byzantine clients.
    num_selected : int
        Number of lowest-score updates averaged.
    """

    name = "multi_krum"

    def __init__(self, num_malicious: int, num_selected: int) -> None:
        super().__init__(num_malicious, num_selected)
