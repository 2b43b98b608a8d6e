r"""FLTrust [Cao et al., 2021]: trust clients by the direction of the server's own update.

The server trains on a small clean root data set to get its update :math:`g_0`. Each client
update is scored by its ReLU-clipped cosine similarity to :math:`g_0`, rescaled to
:math:`\|g_0\|`, and the rescaled updates are averaged with the scores as weights.

Cao, Fang, Liu, Gong. "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping."
NDSS 2021. https://arxiv.org/abs/2012.13995
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from fedshield.rules.base import AggregationRule, ClientBudget, check_updates
from fedshield.rules.errors import AggregationError

logger = logging.getLogger(__name__)


def fltrust(updates: Tensor, *, server_update: Tensor | None) -> Tensor:
    r"""FLTrust aggregation [Cao et al., 2021].

    .. math::

        TS_i = \mathrm{ReLU}\Big(\frac{\langle g_i, g_0 \rangle}{\|g_i\|\,\|g_0\|}\Big), \qquad
        g = \frac{\sum_i TS_i \, \frac{\|g_0\|}{\|g_i\|}\, g_i}{\sum_i TS_i},

    where :math:`g_i` is client *i*'s update and :math:`g_0` the server update.

    A client update of norm 0 gets :math:`TS_i = 0` (its cosine is undefined and it would add
    nothing). If every :math:`TS_i` is 0, or :math:`g_0 = 0`, the aggregate is undefined: a
    zero update is returned (the global model stays as it is) and a warning is logged.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``(num_clients, num_params)``, floating dtype.
    server_update : Tensor
        The server's update on its root data set, shape ``(num_params,)``.

    Returns
    -------
    Tensor
        Shape ``(num_params,)``, dtype of ``updates``; computed in float64.

    Raises
    ------
    ByzantineBudgetError
        If ``num_clients < 1``.
    AggregationError
        If ``server_update`` is missing or not of shape ``(num_params,)``.
    """
    num_clients = check_updates(updates)
    ClientBudget("fltrust", 1).check(num_clients)
    if server_update is None:
        raise AggregationError("fltrust needs server_update (the root-data update); got None")
    if not isinstance(server_update, Tensor) or server_update.shape != updates.shape[1:]:
        shape = tuple(server_update.shape) if isinstance(server_update, Tensor) else server_update
        raise AggregationError(f"server_update must have shape ({updates.shape[1]},); got {shape}")
    points = updates.to(torch.float64)
    reference = server_update.to(device=points.device, dtype=torch.float64)
    reference_norm = torch.linalg.vector_norm(reference)
    norms = torch.linalg.vector_norm(points, dim=1)
    zero = torch.zeros((), dtype=torch.float64, device=points.device)

    nonzero = norms > 0
    safe_norms = torch.where(nonzero, norms, torch.ones_like(norms))
    cosines = (points * reference).sum(dim=1) / (safe_norms * reference_norm)
    trust = torch.where(nonzero, torch.relu(cosines), zero)
    total_trust = trust.sum()
    if not (reference_norm > 0 and total_trust > 0):
        logger.warning(
            "fltrust: every trust score is 0 (server update norm %.3g, %d clients); "
            "returning a zero update, the global model is kept",
            float(reference_norm),
            num_clients,
        )
        return torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
    scales = trust * reference_norm / safe_norms
    aggregate = (points * scales[:, None]).sum(dim=0) / total_trust
    return aggregate.to(updates.dtype)


class FLTrust(AggregationRule):
    """FLTrust as an :class:`AggregationRule`; needs ``server_update``, ignores ``weights``."""

    name = "fltrust"
    requires_server_update = True

    def aggregate(
        self,
        updates: Tensor,
        *,
        weights: Tensor,
        client_ids: Sequence[int],
        server_update: Tensor | None = None,
    ) -> Tensor:
        """Return :func:`fltrust` of ``updates``.

        Raises
        ------
        AggregationError
            If ``server_update`` is None.
        """
        return fltrust(updates, server_update=server_update)
