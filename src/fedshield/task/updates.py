"""A client update held as a low-rank product plus a dense tail: what batched plain SGD returns.

With plain SGD, a client's first-layer update is ``-lr A^T X`` over its own m samples ``X``
(:func:`fedshield.client.batched._train_chunk_deferred`), a product of an ``(out, m)`` and an
``(m, D)`` matrix. :class:`FactoredUpdate` keeps it in that form: screening bounds its norm from
the factors and FedAvg averages the factors (one product per job), so the ``out x D`` block of
every client is never written out. Every other consumer (the robust rules, attacks, Flower)
takes :func:`dense_update`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FactoredUpdate:
    """The flat update ``concat(vec(left @ right), tail)`` (row-major ``vec``, ``state_dict`` order).

    Attributes
    ----------
    left : Tensor
        ``(out, m)``: the first layer's update is ``left @ right``.
    right : Tensor
        ``(m, D)``: the client's samples.
    tail : Tensor
        ``(P - out D,)``: the update of every other parameter.
    """

    left: Tensor
    right: Tensor
    tail: Tensor

    @property
    def first_shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[1]

    @property
    def shape(self) -> tuple[int]:
        rows, columns = self.first_shape
        return (rows * columns + self.tail.numel(),)

    @property
    def dtype(self) -> torch.dtype:
        return self.tail.dtype

    @property
    def device(self) -> torch.device:
        return self.tail.device

    def dense(self) -> Tensor:
        """The flat update as one tensor."""
        rows, columns = self.first_shape
        flat = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        torch.mm(self.left, self.right, out=flat[: rows * columns].view(rows, columns))
        flat[rows * columns :] = self.tail
        return flat

    def norm_bound(self) -> float:
        r"""An upper bound on the L2 norm of :meth:`dense`, from the factors (float64):

        .. math:: \sqrt{\|L\|_F^2 \|R\|_F^2 + \|t\|_2^2} \;\ge\; \|\mathrm{vec}(LR), t\|_2

        since :math:`\|LR\|_F \le \|L\|_F \|R\|_F` (Cauchy-Schwarz per entry). The rounding of
        the float product adds at most a relative :math:`m \varepsilon` per entry, which callers
        leave as a margin (:func:`fedshield.rules.screening.screen_updates`). NaN or inf if a
        factor holds one.
        """
        left, right, tail = (
            float(torch.linalg.vector_norm(t, dtype=torch.float64)) for t in (self.left, self.right, self.tail)
        )
        return norm_bound(left, right, tail)


def norm_bound(left: float, right: float, tail: float) -> float:
    """:meth:`FactoredUpdate.norm_bound` from the three factors' L2 norms."""
    return math.sqrt((left * right) ** 2 + tail**2)


def dense_update(update: Tensor | FactoredUpdate) -> Tensor:
    """``update`` as a flat tensor (a :class:`FactoredUpdate` is multiplied out)."""
    return update.dense() if isinstance(update, FactoredUpdate) else update
