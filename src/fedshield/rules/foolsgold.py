"""FoolsGold [Fung et al., 2020]: down-weight clients whose update histories look alike.

Sybils pushing the same poisoning objective send updates that point the same way round after
round; honest clients with non-IID data do not. FoolsGold compares the clients' *accumulated*
updates by cosine similarity and gives similar clients low weights. The class keeps the history
per client id across calls (one instance per FL job).

Fung, Yoon, Beschastnikh. "The Limitations of Federated Learning in Sybil Settings." RAID 2020.
Reference implementation: https://github.com/DistributedML/FoolsGold
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from fedshield.rules.base import (
    AggregationRule,
    ClientBudget,
    check_client_ids,
    check_updates,
    require_positive_finite,
)
from fedshield.rules.errors import AggregationError

logger = logging.getLogger(__name__)

# 1 - cosine below this counts as 0: float64 rounding of the cosine of identical directions.
_ROUNDING_TOLERANCE = 1e-12


def foolsgold_weights(history: Tensor, *, confidence: float = 1.0) -> Tensor:
    r"""Per-client weights :math:`\alpha_i \in [0, 1]` of FoolsGold [Fung et al., 2020, Alg. 1].

    With :math:`H_i` client *i*'s accumulated update and :math:`\kappa` = ``confidence``:

    .. math::

        cs_{ij} &= \frac{\langle H_i, H_j\rangle}{\|H_i\|\,\|H_j\|} \ (i \ne j), \quad
        cs_{ii} = 0, \quad v_i = \max_j cs_{ij} \\
        cs_{ij} &\leftarrow cs_{ij}\, v_i / v_j \quad \text{if } v_j > v_i
            \quad \text{(pardoning)} \\
        \alpha_i &= \mathrm{clip}_{[0,1]}\big(1 - \max_j cs_{ij}\big), \quad
        \alpha \leftarrow \alpha / \max_i \alpha_i, \quad
        \alpha_i \leftarrow 0.99 \text{ where } \alpha_i = 1 \\
        \alpha_i &\leftarrow \mathrm{clip}_{[0,1]}\Big(\kappa\big(\ln\tfrac{\alpha_i}{1 - \alpha_i}
            + 0.5\big)\Big) \quad \text{(logit)}

    As in the authors' reference code, :math:`cs_{ii} = 0` enters the maxima (so
    :math:`v_i \ge 0`) and a zero history has cosine 0 with every other. A value of
    :math:`1 - \max_j cs_{ij}` below 1e-12 (rounding of identical directions) counts as 0.
    The optional feature-importance weighting of the paper is not applied. If all histories
    are pairwise identical in direction, every :math:`\alpha_i` is 0 (all look like sybils).

    Parameters
    ----------
    history : Tensor
        Accumulated updates of the current clients, shape ``(num_clients, num_params)``.
    confidence : float
        :math:`\kappa > 0`, the slope of the logit.

    Returns
    -------
    Tensor
        Shape ``(num_clients,)``, float64, entries in ``[0, 1]``.
    """
    num_clients = check_updates(history, name="history")
    ClientBudget("foolsgold", 1).check(num_clients)
    require_positive_finite("confidence", confidence)
    points = history.to(torch.float64)
    norms = torch.linalg.vector_norm(points, dim=1, keepdim=True)
    units = torch.where(norms > 0, points / torch.where(norms > 0, norms, 1.0), 0.0)
    similarity = torch.empty((num_clients, num_clients), dtype=torch.float64, device=points.device)
    for row, unit in enumerate(units):
        similarity[row] = (units * unit).sum(dim=1)
    similarity.fill_diagonal_(0.0)

    largest = similarity.max(dim=1).values  # v_i >= 0 because of the zero diagonal
    ratio = largest[:, None] / torch.where(largest > 0, largest, 1.0)[None, :]
    pardoned = torch.where(largest[None, :] > largest[:, None], similarity * ratio, similarity)
    weights = (1.0 - pardoned.max(dim=1).values).clamp(0.0, 1.0)
    # Identical directions give cosines of 1 +- 1e-16, not exactly 1; the rescaling below
    # would blow that rounding noise up to a full weight.
    weights = torch.where(weights <= _ROUNDING_TOLERANCE, 0.0, weights)
    if not weights.max() > 0:
        return torch.zeros_like(weights)
    weights = weights / weights.max()
    weights = torch.where(weights == 1.0, 0.99, weights)
    logits = confidence * (torch.log(weights / (1.0 - weights)) + 0.5)  # log(0) = -inf -> 0
    return logits.clamp(0.0, 1.0)


def foolsgold(updates: Tensor, *, history: Tensor, confidence: float = 1.0) -> Tensor:
    r"""Weighted average of the current updates with the FoolsGold weights of ``history``.

    .. math:: g = \frac{\sum_i \alpha_i x_i}{\sum_i \alpha_i}

    The paper's Algorithm 1 adds :math:`\sum_i \alpha_i x_i` unnormalized; we divide by
    :math:`\sum_i \alpha_i` so the step has the scale of FedAvg. If every :math:`\alpha_i` is
    0, a zero update is returned (the global model is kept) and a warning is logged.

    Parameters
    ----------
    updates : Tensor
        Current client updates, shape ``(num_clients, num_params)``.
    history : Tensor
        The same clients' accumulated updates (including the current ones), same shape.
    confidence : float
        :math:`\kappa`, see :func:`foolsgold_weights`.

    Returns
    -------
    Tensor
        Shape ``(num_params,)``, dtype of ``updates``.
    """
    check_updates(updates)
    if history.shape != updates.shape:
        raise AggregationError(
            f"history must have the shape of updates {tuple(updates.shape)}; got {tuple(history.shape)}"
        )
    weights = foolsgold_weights(history, confidence=confidence).to(updates.device)
    total = weights.sum()
    if not total > 0:
        logger.warning(
            "foolsgold: every client weight is 0 (%d clients look alike); "
            "returning a zero update, the global model is kept",
            len(updates),
        )
        return torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
    aggregate = (updates.to(torch.float64) * weights[:, None]).sum(dim=0) / total
    return aggregate.to(updates.dtype)


class FoolsGold(AggregationRule):
    """FoolsGold with per-client history as a stateful :class:`AggregationRule`.

    Each call adds the clients' current updates to their histories (keyed by ``client_ids``)
    and aggregates with :func:`foolsgold`. Ignores ``weights``. Create one instance per FL job.

    Parameters
    ----------
    confidence : float
        :math:`\\kappa`, see :func:`foolsgold_weights`.
    """

    name = "foolsgold"
    is_stateful = True

    def __init__(self, confidence: float = 1.0) -> None:
        self.confidence = require_positive_finite("confidence", confidence)
        self._history: dict[int, Tensor] = {}

    def aggregate(
        self,
        updates: Tensor,
        *,
        weights: Tensor,
        client_ids: Sequence[int],
        server_update: Tensor | None = None,
    ) -> Tensor:
        """Add ``updates`` to the clients' histories, then return :func:`foolsgold`."""
        num_clients = check_updates(updates)
        identifiers = check_client_ids(client_ids, num_clients=num_clients)
        wide = updates.to(torch.float64)
        histories = []
        for identifier, update in zip(identifiers, wide, strict=True):
            previous = self._history.get(identifier)
            if previous is not None and previous.shape != update.shape:
                raise AggregationError(
                    f"client {identifier} has a history of {previous.numel()} params; got an update of {update.numel()}"
                )
            histories.append(update if previous is None else previous + update)
        history = torch.stack(histories)
        result = foolsgold(updates, history=history, confidence=self.confidence)
        self._history.update(zip(identifiers, histories, strict=True))
        return result
