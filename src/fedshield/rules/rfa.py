"""RFA: the weighted geometric median of the updates by the smoothed Weiszfeld algorithm
[Pillutla et al., 2022].

Pillutla, Kakade, Harchaoui. "Robust Aggregation for Federated Learning." IEEE Transactions on
Signal Processing 70, 2022. https://arxiv.org/abs/1912.13445
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
    require_integer,
)


def _check_parameters(max_iterations: int, tolerance: float, smoothing: float) -> None:
    require_integer("max_iterations", max_iterations, minimum=1)
    if not (isinstance(tolerance, int | float) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0; got tolerance={tolerance!r}")
    if not (isinstance(smoothing, int | float) and smoothing > 0):
        raise ValueError(f"smoothing must be a number > 0; got smoothing={smoothing!r}")


def geometric_median(
    updates: Tensor,
    *,
    weights: Tensor,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
    smoothing: float = 1e-6,
) -> Tensor:
    r"""Weighted geometric median by the smoothed Weiszfeld algorithm [Pillutla et al., 2022].

    Approximately minimizes

    .. math:: g(z) = \sum_{i=1}^n \alpha_i \|z - x_i\|_2, \qquad \alpha_i = w_i / \sum_j w_j,

    starting from the weighted mean and iterating

    .. math::

        \beta_i = \frac{\alpha_i}{\max(\nu, \|z^{(t)} - x_i\|_2)}, \qquad
        z^{(t+1)} = \frac{\sum_i \beta_i x_i}{\sum_i \beta_i},

    with :math:`\nu` = ``smoothing``, until the optimality residual

    .. math:: r(z^{(t)}) = \Big\| \sum_i \beta_i (x_i - z^{(t)}) \Big\|_2
              = \Big\| \sum_i \alpha_i \frac{x_i - z^{(t)}}{\max(\nu, \|x_i - z^{(t)}\|_2)}
                \Big\|_2 \le \text{tolerance}

    or ``max_iterations`` steps. :math:`r` is the norm of the gradient of the smoothed objective;
    it is dimensionless (a weighted sum of at most unit vectors, so in ``[0, 1]``) and vanishes
    at the minimizer: if that coincides with no :math:`x_i`,
    :math:`\sum_i \alpha_i (x_i - z)/\|x_i - z\| = 0`. Breakdown point 1/2: points holding less
    than half the total weight cannot move the median arbitrarily far.

    Pillutla et al.'s code stops instead when :math:`g` decreases by less than a fraction
    ``ftol`` of itself. An outlier of norm :math:`M` makes :math:`g \approx \alpha M`, so that
    test stops early, at a distance from the median that grows with :math:`M` (here, with
    tolerance 1e-6 and one of seven updates at :math:`M \cdot (1, 1, 1)`: about
    :math:`1.7 \cdot 10^{-8} M`). The residual test does not depend on :math:`M`.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``(num_clients, num_params)``, floating dtype.
    weights : Tensor
        Sample counts :math:`w_i`, shape ``(num_clients,)``, finite, >= 0, positive sum.
    max_iterations : int
        Maximum Weiszfeld steps, >= 1.
    tolerance : float
        Optimality residual :math:`r` at which iteration stops, >= 0.
    smoothing : float
        :math:`\nu > 0`; keeps the step defined when :math:`z` reaches a data point.

    Returns
    -------
    Tensor
        Shape ``(num_params,)``, dtype of ``updates``; iterates computed in float64.

    Raises
    ------
    ByzantineBudgetError
        If ``num_clients < 1``.
    AggregationError
        If ``updates`` or ``weights`` is malformed.
    """
    num_clients = check_updates(updates)
    ClientBudget("rfa", 1).check(num_clients)
    _check_parameters(max_iterations, tolerance, smoothing)
    points = updates.to(torch.float64)
    proportions = normalized_weights(weights, num_clients=num_clients).to(points.device)

    median = (points * proportions[:, None]).sum(dim=0)
    for _ in range(max_iterations):
        distances = torch.linalg.vector_norm(points - median, dim=1)
        betas = proportions / torch.clamp(distances, min=smoothing)  # max(nu, ||z - x_i||)
        previous, median = median, (points * betas[:, None]).sum(dim=0) / betas.sum()
        # sum_i beta_i (x_i - z_t) = (sum_i beta_i) (z_{t+1} - z_t): the residual r(z_t).
        residual = float(betas.sum() * torch.linalg.vector_norm(median - previous))
        if residual <= tolerance:
            break
    return median.to(updates.dtype)


class RFA(AggregationRule):
    """RFA (weighted geometric median) as an :class:`AggregationRule`; weights by sample count.

    Parameters
    ----------
    max_iterations, tolerance, smoothing
        See :func:`geometric_median`.
    """

    name = "rfa"

    def __init__(self, max_iterations: int = 100, tolerance: float = 1e-6, smoothing: float = 1e-6) -> None:
        _check_parameters(max_iterations, tolerance, smoothing)
        self.max_iterations = max_iterations
        self.tolerance = tolerance
        self.smoothing = smoothing

    def aggregate(
        self,
        updates: Tensor,
        *,
        weights: Tensor,
        client_ids: Sequence[int],
        server_update: Tensor | None = None,
    ) -> Tensor:
        """Return :func:`geometric_median` of ``updates`` weighted by ``weights``."""
        return geometric_median(
            updates,
            weights=weights,
            max_iterations=self.max_iterations,
            tolerance=self.tolerance,
            smoothing=self.smoothing,
        )
