"""Federated Averaging: the sample-weighted mean of the updates [McMahan et al., 2017].

Not Byzantine-robust: one client can move the aggregate arbitrarily far. It is the baseline the
robust rules are compared against.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas. "Communication-Efficient Learning of Deep
Networks from Decentralized Data." AISTATS 2017. https://arxiv.org/abs/1602.05629
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    entry's terms (exact in real arithmetic). :func:`fedavg_factored_steps` for many jobs.

    Raises
    ------
    ByzantineBudgetError
        If there is no update.
    AggregationError
        If the weights are malformed or the updates' layouts differ.
    """
    stacked = _StackedFactors.of([updates], [weights])
    rows, columns = stacked.first_shape
    mean = torch.empty(rows * columns + stacked.tails.shape[1], dtype=stacked.left.dtype, device=stacked.left.device)
    torch.mm(stacked.left, stacked.right, out=mean[: rows * columns].view(rows, columns))
    mean[rows * columns :] = stacked.tails[0]
    return mean


def fedavg_factored_steps(
    jobs: Sequence[Sequence[FactoredUpdate]], weights: Sequence[Tensor], start: Sequence[Tensor], *, scale: float = 1.0
) -> list[Tensor]:
    """Each job's ``start + scale * fedavg_factored(updates)``, each its own tensor, the means never
    written out: the first block is one ``addmm`` from the job's start (a server step at a
    fraction of the memory traffic of forming the mean and adding it)."""
    stacked = _StackedFactors.of(jobs, weights)
    rows, columns = stacked.first_shape
    stepped = []
    for job, (begin, end) in enumerate(stacked.ranges):
        params = start[job]
        new = torch.empty_like(params)
        torch.addmm(
            params[: rows * columns].view(rows, columns),
            stacked.left[:, begin:end],
            stacked.right[begin:end],
            alpha=scale,
            out=new[: rows * columns].view(rows, columns),
        )
        torch.add(params[rows * columns :], stacked.tails[job], alpha=scale, out=new[rows * columns :])
        stepped.append(new)
    return stepped


@dataclass(frozen=True)
class _StackedFactors:
    """Every job's factors side by side: job j's updates are columns ``ranges[j]`` of ``left``
    (each scaled by its client's proportion ``p_i``) and the same rows of ``right``; ``tails``
    holds each job's weighted tail mean. A fixed number of operations whatever the jobs."""

    left: Tensor  # (out, sum of all m_i)
    right: Tensor  # (sum of all m_i, D)
    ranges: list[tuple[int, int]]
    tails: Tensor  # (num_jobs, tail size)

    @property
    def first_shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[1]

    @classmethod
    def of(cls, jobs: Sequence[Sequence[FactoredUpdate]], weights: Sequence[Tensor]) -> _StackedFactors:
        for updates in jobs:
            ClientBudget("fedavg", 1).check(len(updates))
        updates = [u for job in jobs for u in job]
        layouts = {(u.first_shape, u.tail.shape, u.dtype, u.device) for u in updates}
        if len(layouts) != 1:
            raise AggregationError(f"factored updates must share their layout; got {sorted(map(str, layouts))}")
        dtype, device = updates[0].dtype, updates[0].device
        proportions = torch.cat(
            [normalized_weights(counts, num_clients=len(job)) for job, counts in zip(jobs, weights, strict=True)]
        ).to(dtype=dtype, device=device)
        samples = [u.left.shape[1] for u in updates]
        ranges, job_of_update, offset = [], [], 0
        for job, job_updates in enumerate(jobs):
            width = sum(u.left.shape[1] for u in job_updates)
            ranges.append((offset, offset + width))
            job_of_update += [job] * len(job_updates)
            offset += width
        scale = proportions.repeat_interleave(torch.tensor(samples, device=device))
        left = torch.cat([u.left for u in updates], dim=1).mul_(scale)
        right = torch.cat([u.right for u in updates])
        tails = torch.zeros(len(jobs), updates[0].tail.numel(), dtype=dtype, device=device).index_add_(
            0,
            torch.tensor(job_of_update, device=device),
            torch.stack([u.tail for u in updates]).mul_(proportions[:, None]),
        )
        return cls(left, right, ranges, tails)


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

    def step_factored_many(
        self,
        jobs: Sequence[Sequence[FactoredUpdate]],
        weights: Sequence[Tensor],
        start: Sequence[Tensor],
        *,
        scale: float = 1.0,
    ) -> list[Tensor]:
        """Return :func:`fedavg_factored_steps` of the jobs' updates."""
        return fedavg_factored_steps(jobs, weights, start, scale=scale)
