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
from fedshield.rules.errors import AggregationError
from fedshield.task.updates import FactoredUpdate


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


def fedavg_factored(updates: Sequence[FactoredUpdate], *, weights: Tensor) -> Tensor:
    r""":func:`fedavg` of factored updates :math:`x_i = (\mathrm{vec}(L_i R_i), t_i)`, without
    multiplying them out one by one:

    .. math:: \bar{x} = \Big(\mathrm{vec}\big([p_1 L_1 \cdots p_n L_n]
              \,[R_1; \ldots; R_n]\big),\; \sum_i p_i t_i\Big),
              \qquad p_i = \frac{w_i}{\sum_j w_j}

    The first block is one product of an ``(out, sum m_i)`` and a ``(sum m_i, D)`` matrix in the
    updates' dtype (the clients together, written once: a float64 product and its conversion
    cost more than the dense mean here). Equal to :func:`fedavg` of the dense updates up to
    float rounding, at most about ``(sum m_i) eps`` relative to the sum of the magnitudes of an
    entry's terms (exact in real arithmetic). :func:`fedavg_factored_many` for many jobs.

    Raises
    ------
    ByzantineBudgetError
        If there is no update.
    AggregationError
        If the weights are malformed or the updates' layouts differ.
    """
    return fedavg_factored_many([updates], [weights])[0]


def fedavg_factored_many(jobs: Sequence[Sequence[FactoredUpdate]], weights: Sequence[Tensor]) -> Tensor:
    """:func:`fedavg_factored` of each job's updates (one row each, ``(num_jobs, num_params)``),
    all jobs in one batched product: each job's factors are zero-padded to the largest
    ``sum m_i`` (zero columns and rows add exact zeros), with a fixed number of operations
    whatever the number of jobs. Every update shares one layout."""
    for updates in jobs:
        ClientBudget("fedavg", 1).check(len(updates))
    updates = [u for job in jobs for u in job]
    layouts = {(u.first_shape, u.tail.shape, u.dtype, u.device) for u in updates}
    if len(layouts) != 1:
        raise AggregationError(f"factored updates must share their layout; got {sorted(map(str, layouts))}")
    first = updates[0]
    rows, columns = first.first_shape
    dtype, device = first.dtype, first.device
    proportions = torch.cat(
        [normalized_weights(counts, num_clients=len(job)) for job, counts in zip(jobs, weights, strict=True)]
    ).to(dtype=dtype, device=device)
    # Where each sample column of each update goes in the (jobs x width) padded layout.
    samples = [u.left.shape[1] for u in updates]
    width = max(sum(u.left.shape[1] for u in job) for job in jobs)
    slots: list[int] = []
    job_of_update: list[int] = []
    for job, job_updates in enumerate(jobs):
        slots += range(job * width, job * width + sum(u.left.shape[1] for u in job_updates))
        job_of_update += [job] * len(job_updates)
    slot = torch.tensor(slots, device=first.device)
    sample_scale = proportions.repeat_interleave(torch.tensor(samples, device=first.device))
    left = torch.zeros(rows, len(jobs) * width, dtype=dtype, device=device)
    left.index_copy_(1, slot, torch.cat([u.left for u in updates], dim=1).mul_(sample_scale))
    right = torch.zeros(len(jobs) * width, columns, dtype=dtype, device=device)
    right.index_copy_(0, slot, torch.cat([u.right for u in updates]))
    mean = torch.empty(len(jobs), first.shape[0], dtype=dtype, device=device)
    mean[:, : rows * columns].view(len(jobs), rows, columns).baddbmm_(
        left.view(rows, len(jobs), width).transpose(0, 1), right.view(len(jobs), width, columns), beta=0
    )
    tails = torch.stack([u.tail for u in updates]).mul_(proportions.unsqueeze(1))
    mean[:, rows * columns :] = torch.zeros(len(jobs), first.tail.numel(), dtype=dtype, device=device).index_add_(
        0, torch.tensor(job_of_update, device=first.device), tails
    )
    return mean


class FedAvg(AggregationRule):
    """FedAvg as an :class:`AggregationRule`; weights clients by their sample counts."""

    name = "fedavg"
    accepts_factored = True

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

    def aggregate_factored(self, updates: Sequence[FactoredUpdate], *, weights: Tensor) -> Tensor:
        """Return :func:`fedavg_factored` of ``updates``."""
        return fedavg_factored(updates, weights=weights)

    def aggregate_factored_many(self, jobs: Sequence[Sequence[FactoredUpdate]], weights: Sequence[Tensor]) -> Tensor:
        """Return :func:`fedavg_factored_many` of the jobs' updates."""
        return fedavg_factored_many(jobs, weights)
