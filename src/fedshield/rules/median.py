"""Coordinate-wise median [Yin et al., 2018].

The true median: for an even number of clients, the mean of the two middle values, as
``np.median`` and Flower's ``FedMedian`` compute it (``torch.median`` returns the lower one).

Yin, Chen, Ramchandran, Bartlett. "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates." ICML 2018.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedshield.rules.base import AggregationRule, ClientBudget, check_updates


def median_of_sorted(sorted_values: Tensor) -> Tensor:
    r"""Median along dim 0 of values already sorted along dim 0.

    .. math::

        \mathrm{med}_k = x_{((n+1)/2)k} \ (n \text{ odd}), \qquad
        \mathrm{med}_k = \tfrac12 x_{(n/2)k} + \tfrac12 x_{(n/2+1)k} \ (n \text{ even}).

    Halving each value before adding cannot overflow and, halving being exact, rounds to the
    same number as ``(a + b) / 2`` whenever the latter does not overflow.
    """
    num_values = sorted_values.shape[0]
    upper = sorted_values[num_values // 2]
    if num_values % 2 == 1:
        return upper.clone()
    lower = sorted_values[num_values // 2 - 1]
    return lower / 2 + upper / 2


def coordinate_median(updates: Tensor) -> Tensor:
    r"""Coordinate-wise median of the updates [Yin et al., 2018, Definition 1].

    .. math:: \mathrm{med}(x)_k = \mathrm{median}\{x_{1k}, \dots, x_{nk}\}

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``(num_clients, num_params)``, floating dtype.

    Returns
    -------
    Tensor
        Shape ``(num_params,)``, dtype of ``updates``.

    Raises
    ------
    ByzantineBudgetError
        If ``num_clients < 1``.
    """
    num_clients = check_updates(updates)
    ClientBudget("median", 1).check(num_clients)
    return median_of_sorted(torch.sort(updates, dim=0).values)


class Median(AggregationRule):
    """Coordinate-wise median as an :class:`AggregationRule`; ignores ``weights``."""

    name = "median"

    def aggregate(
        self,
        updates: Tensor,
        *,
        weights: Tensor,
        client_ids: Sequence[int],
        server_update: Tensor | None = None,
    ) -> Tensor:
        """Return :func:`coordinate_median` of ``updates``; the other arguments are unused."""
        return coordinate_median(updates)
