"""Bulyan [El Mhamdi et al., 2018]: iterated Krum selection, then a coordinate-wise trimmed mean
around the median.

Requires ``n >= 4f + 3``; violations raise
:class:`~fedshield.rules.errors.ByzantineBudgetError` (Flower's ``Bulyan`` logs a warning
and skips the round instead).

El Mhamdi, Guerraoui, Rouault. "The Hidden Vulnerability of Distributed Learning in Byzantium."
ICML 2018. https://arxiv.org/abs/1802.07927
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
from fedshield.rules.krum import krum_scores, pairwise_squared_distances
from fedshield.rules.median import median_of_sorted


def _budget(num_malicious: int) -> ClientBudget:
    require_integer("num_malicious", num_malicious, minimum=0)
    return ClientBudget("bulyan", 4 * num_malicious + 3, "4 * num_malicious + 3", {"num_malicious": num_malicious})


def _iterated_krum(updates: Tensor, *, num_malicious: int, num_to_select: int) -> list[int]:
    """Row indices picked one at a time by Krum on the not-yet-picked rows, in pick order."""
    distances = pairwise_squared_distances(updates)
    remaining = list(range(updates.shape[0]))
    selected: list[int] = []
    while len(selected) < num_to_select:
        # Krum's own neighbour count |R| - f - 2, but at least two neighbours (see Notes).
        num_neighbours = max(len(remaining) - num_malicious - 2, min(2, len(remaining) - 1))
        rows = torch.tensor(remaining, device=distances.device)
        scores = krum_scores(distances[rows][:, rows], num_neighbours=num_neighbours)
        selected.append(remaining.pop(int(torch.argmin(scores))))  # first minimum: lower index
    return selected


def bulyan(updates: Tensor, *, num_malicious: int) -> Tensor:
    r"""Bulyan of Krum [El Mhamdi et al., 2018, Section 4].

    With :math:`n` = num_clients, :math:`f` = ``num_malicious``, :math:`\theta = n - 2f` and
    :math:`\beta = \theta - 2f`:

    1. Selection: starting from :math:`R` = all updates, :math:`\theta` times pick the Krum
       winner of :math:`R` (lowest score :math:`s(i) = \sum_{j \in N_i}\|x_i - x_j\|_2^2` over its
       :math:`|R| - f - 2` nearest others in :math:`R`), move it from :math:`R` to :math:`S`.
    2. Aggregation: for each coordinate :math:`k`, with :math:`m_k` the median of
       :math:`\{x_k : x \in S\}`, average the :math:`\beta` values closest to :math:`m_k`:

       .. math:: \mathrm{bulyan}(x)_k = \frac{1}{\beta} \sum_{x \in B_k} x_k, \quad
                 B_k = \arg\min_{|B| = \beta,\ B \subseteq S} \sum_{x \in B} |x_k - m_k|.

    Parameters
    ----------
    updates : Tensor
        Client updates, shape ``(num_clients, num_params)``, floating dtype.
    num_malicious : int
        Assumed number of Byzantine clients, :math:`f \ge 0`.

    Returns
    -------
    Tensor
        Shape ``(num_params,)``, dtype of ``updates``.

    Raises
    ------
    ByzantineBudgetError
        If ``n < 4 * num_malicious + 3``.

    Notes
    -----
    The last two selections run Krum on :math:`|R| = 2f + 2` and :math:`2f + 1` updates, below
    Krum's own :math:`2f + 3`; the paper applies it there regardless. With :math:`f = 1` the
    neighbour count :math:`|R| - f - 2` is then 1 or 0: with one neighbour, mutual nearest
    neighbours always tie, with none every score is 0, so the pick would depend on the order
    of the clients. We therefore use at least two neighbours (or all of :math:`R` if smaller);
    for :math:`f \ge 3` this changes nothing. With :math:`f = 0` all updates are selected.

    In step 2 a value equally close to the median as another one is broken toward the lower
    value, so the result depends only on the set of updates. Flower's
    ``aggregate_n_closest_weights`` is not reused: it picks among equally close values with
    ``np.argpartition``, whose choice depends on the order of the clients (values
    :math:`\{0, 1, 2\}`, :math:`\beta = 2`: mean 0.5 or 1.5).
    """
    num_clients = check_updates(updates)
    _budget(num_malicious).check(num_clients)
    selection_size = num_clients - 2 * num_malicious
    closest_count = selection_size - 2 * num_malicious
    selected = _iterated_krum(updates, num_malicious=num_malicious, num_to_select=selection_size)
    values = torch.sort(updates[selected], dim=0).values
    median = median_of_sorted(values)
    # Stable sort of the (value-sorted) rows by distance: equal distances keep the lower value.
    order = torch.sort((values - median).abs(), dim=0, stable=True).indices[:closest_count]
    closest = torch.gather(values, 0, order)
    return closest.to(torch.float64).mean(dim=0).to(updates.dtype)


class Bulyan(AggregationRule):
    """Bulyan as an :class:`AggregationRule`; ignores ``weights``.

    Parameters
    ----------
    num_malicious : int
        Assumed number of Byzantine clients; requires ``n >= 4 * num_malicious + 3``.
    """

    name = "bulyan"

    def __init__(self, num_malicious: int) -> None:
        self.num_malicious = num_malicious
        self.budget()  # validates num_malicious

    def budget(self) -> ClientBudget:
        """``n >= 4 * num_malicious + 3``."""
        return _budget(self.num_malicious)

    def aggregate(
        self,
        updates: Tensor,
        *,
        weights: Tensor,
        client_ids: Sequence[int],
        server_update: Tensor | None = None,
    ) -> Tensor:
        """Return :func:`bulyan` of ``updates``; the other arguments are unused."""
        return bulyan(updates, num_malicious=self.num_malicious)
