"""Federated Averaging: the sample-weighted mean of the updates [McMahan et al., 2017].

Not Byzantine-robust: one client can move the aggregate arbitrarily far. It is the baseline the
robust rules are compared against.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas. "Communication-Efficient Learning of Deep
Networks from Decentralized Data." AISTATS 2017. https://arxiv.org/abs/1602.05629
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedshield.rules.base import (
    AggregationRule,
    ClientBudget,
    check_updates,
    normalized_weights,
)


def fedavg(updates: Tensor, *, weights: Tensor) -> Tensor:
    r"""Sample-weighted mean of the updates, FedAvg [McMahan et al., 2017].

    .. math:: \bar{x} = \sum_{i=1}^{n} \frac{w_i}{\sum_j w_j}\, x_i

    where :math:`x_i` is client *i*'s update and :math:`w_i` its sample count.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``(num_clients, num_params)``, floating dtype.
    weights : Tensor
        Sample counts, shape ``(num_clients,)``, finite, >= 0, with a positive sum.

    Returns
    -------
    Tensor
        Shape ``(num_params,)``, dtype of ``updates``; accumulated in float64.

    Raises
    ------
    ByzantineBudgetError
        If ``num_clients < 1``.
    AggregationError
        If ``updates`` or ``weights`` is malformed.
    """
    num_clients = check_updates(updates)
    ClientBudget("fedavg", 1).check(num_clients)
    proportions = normalized_weights(weights, num_clients=num_clients).to(updates.device)
    # In place on a float64 copy: the same products as ``updates.double() * proportions[:, None]``
    # without a second (n, P) float64 block.
    weighted = updates.to(torch.float64, copy=True).mul_(proportions[:, None])
    return weighted.sum(dim=0).to(updates.dtype)


class FedAvg(AggregationRule):
    """FedAvg as an :class:`AggregationRule`; weights clients by their sample counts."""

    name = "fedavg"

    def aggregate(
        self,
        updates: Tensor,
        *,
        weights: Tensor,
        client_ids: Sequence[int],
        server_update: Tensor | None = None,
    ) -> Tensor:
        """Return :func:`fedavg` of ``updates``; ``client_ids`` and ``server_update`` unused."""
        return fedavg(updates, weights=weights)
