"""Coordinate-wise trimmed mean [Yin et al., 2018].

For every coordinate, the ``num_trimmed`` largest and ``num_trimmed`` smallest client values are
dropped and the rest averaged. The precondition ``2 * num_trimmed < num_clients`` is checked
(a larger trim would leave nothing to average: NaN in implementations that do not check).

Yin, Chen, Ramchandran, Bartlett. "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates." ICML 2018.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from torch import Tensor

from fedshield.rules.base import (
    AggregationRule,
    ClientBudget,
    check_updates,
    require_integer,
)


def _budget(num_trimmed: int) -> ClientBudget:
    require_integer("num_trimmed", num_trimmed, minimum=0)
    return ClientBudget("trimmed_mean", 2 * num_trimmed + 1, "2 * num_trimmed + 1", {"num_trimmed": num_trimmed})


def trimmed_mean(updates: Tensor, *, num_trimmed: int) -> Tensor:
    r"""Coordinate-wise trimmed mean [Yin et al., 2018, Definition 2].

    For each coordinate :math:`k`, with :math:`x_{(1)k} \le \dots \le x_{(n)k}` the sorted client
    values and :math:`b` = ``num_trimmed``,

    .. math:: \mathrm{trmean}_b(x)_k = \frac{1}{n - 2b} \sum_{i=b+1}^{n-b} x_{(i)k}.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``(num_clients, num_params)``, floating dtype (CPU or any device;
        the work is done by numpy on the CPU).
    num_trimmed : int
        Values dropped from each end of each coordinate, :math:`b \ge 0`.

    Returns
    -------
    Tensor
        Shape ``(num_params,)``, dtype and device of ``updates``.

    Raises
    ------
    ByzantineBudgetError
        If ``num_clients < 2 * num_trimmed + 1``.
    """
    num_clients = check_updates(updates)
    _budget(num_trimmed).check(num_clients)
    # Flower's trim_mean drops int(cut_fraction * n) values per side (after np.partition) and
    # requires cut_fraction < 0.5. Passing cut_fraction = b / n could drop b - 1 when the
    # product rounds down (b / n * n = 2.9999...). With cut_fraction = (b + 1/4) / n the
    # computed product is within a few ulps of b + 1/4, so int() gives exactly b for any
    # realistic b (< 2**49); and (b + 1/4) / n < 1/2 whenever 2b < n, i.e. also for n = 2b + 1.
    cut_fraction = (num_trimmed + 0.25) / num_clients
    values = updates.detach().cpu().numpy()
    result = np.asarray(trim_mean(values, cut_fraction))
    return torch.from_numpy(result).to(device=updates.device, dtype=updates.dtype)


def trimmed_count(trim_fraction: float, num_clients: int) -> int:
    r"""Values trimmed per side for a fraction: :math:`\lfloor \text{fraction} \cdot n \rfloor`.

    The fraction is read as the decimal the user wrote (``Fraction(repr(trim_fraction))``), so
    ``0.29 * 100`` gives 29 rather than the 28 that binary floating point would give.
    """
    return math.floor(Fraction(repr(trim_fraction)) * num_clients)


class TrimmedMean(AggregationRule):
    """Coordinate-wise trimmed mean as an :class:`AggregationRule`; ignores ``weights``.

    Parameters
    ----------
    num_trimmed : int or None
        Values dropped per side of each coordinate, :math:`b`. Requires ``n >= 2b + 1``.
    trim_fraction : float or None
        Alternatively, a fraction in ``[0, 0.5)``: ``b = floor(trim_fraction * n)`` for each
        call, which always satisfies ``2b < n``.

    Exactly one of ``num_trimmed`` and ``trim_fraction`` must be given.
    """

    name = "trimmed_mean"

    def __init__(self, num_trimmed: int | None = None, trim_fraction: float | None = None) -> None:
        if (num_trimmed is None) == (trim_fraction is None):
            raise ValueError(
                "exactly one of num_trimmed and trim_fraction must be given; got "
                f"num_trimmed={num_trimmed!r}, trim_fraction={trim_fraction!r}"
            )
        if trim_fraction is not None and not (isinstance(trim_fraction, int | float) and 0 <= trim_fraction < 0.5):
            raise ValueError(f"trim_fraction must be in [0, 0.5); got trim_fraction={trim_fraction!r}")
        self.num_trimmed = num_trimmed
        self.trim_fraction = trim_fraction
        self.budget()  # validates num_trimmed

    def budget(self) -> ClientBudget:
        """``n >= 2 * num_trimmed + 1``; with ``trim_fraction``, any ``n >= 1``."""
        if self.num_trimmed is None:
            return ClientBudget(self.name, 1)
        return _budget(self.num_trimmed)

    def aggregate(
        self,
        updates: Tensor,
        *,
        weights: Tensor,
        client_ids: Sequence[int],
        server_update: Tensor | None = None,
    ) -> Tensor:
        """Return :func:`trimmed_mean` of ``updates``; the other arguments are unused."""
        num_trimmed = self.num_trimmed
        if num_trimmed is None:  # __init__ set exactly one of the two
            num_trimmed = trimmed_count(self.trim_fraction or 0.0, len(updates))
        return trimmed_mean(updates, num_trimmed=num_trimmed)
