"""The interface of an aggregation rule, its client budget, and the input checks all rules share.

An aggregation rule maps the clients' flattened model *updates* (client model minus global
model), a ``(num_clients, num_params)`` tensor, to one update of shape ``(num_params,)`` with
the same dtype. Each rule is a pure, keyword-only function in its own module; a thin
:class:`AggregationRule` subclass holds the rule's parameters (and, for FoolsGold, its state).

Rules that weight clients by their sample counts: FedAvg and RFA. All others ignore ``weights``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedshield.rules.errors import AggregationError, ByzantineBudgetError
from fedshield.task.updates import FactoredUpdate


@dataclass(frozen=True)
class ClientBudget:
    """The fewest clients a rule accepts, and how that number follows from its parameters.

    Attributes
    ----------
    rule : str
        Name of the rule, used in the error message.
    minimum : int
        Smallest admissible ``num_clients``.
    formula : str
        How ``minimum`` is computed, e.g. ``"2 * num_malicious + 3"``; empty for a constant.
    parameters : Mapping[str, int]
        The parameters named in ``formula`` and their values.
    """

    rule: str
    minimum: int
    formula: str = ""
    parameters: Mapping[str, int] = field(default_factory=dict)

    def check(self, num_clients: int) -> None:
        """Raise :class:`ByzantineBudgetError` if ``num_clients < minimum``.

        The message reads, e.g., ``krum needs num_clients >= 2 * num_malicious + 3 = 7
        (num_malicious=2); got num_clients=5``.
        """
        if num_clients >= self.minimum:
            return
        bound = f"{self.formula} = {self.minimum}" if self.formula else str(self.minimum)
        named = ", ".join(f"{name}={value}" for name, value in self.parameters.items())
        detail = f" ({named})" if named else ""
        raise ByzantineBudgetError(f"{self.rule} needs num_clients >= {bound}{detail}; got num_clients={num_clients}")


def require_integer(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` if it is an ``int >= minimum``, else raise ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {name}={value!r}")
    return value


def check_updates(updates: Tensor, *, name: str = "updates") -> int:
    """Check that ``updates`` is a 2-D floating tensor and return its number of rows.

    Raises
    ------
    AggregationError
        If ``updates`` is not a tensor of shape ``(num_clients, num_params)`` with a floating
        dtype.
    """
    if not isinstance(updates, Tensor) or updates.ndim != 2:
        shape = tuple(updates.shape) if isinstance(updates, Tensor) else type(updates).__name__
        raise AggregationError(f"{name} must be a 2-D tensor of shape (num_clients, num_params); got {shape}")
    if not updates.is_floating_point():
        raise AggregationError(f"{name} must have a floating dtype; got dtype={updates.dtype}")
    return updates.shape[0]


def normalized_weights(weights: Tensor, *, num_clients: int) -> Tensor:
    r"""Return :math:`w_i / \sum_j w_j` in float64 after checking the sample counts.

    Raises
    ------
    AggregationError
        If ``weights`` is not of shape ``(num_clients,)``, has a negative or non-finite entry,
        or sums to 0.
    """
    weights = torch.as_tensor(weights)
    if weights.shape != (num_clients,):
        raise AggregationError(f"weights must have shape ({num_clients},); got shape {tuple(weights.shape)}")
    weights = weights.to(torch.float64)
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise AggregationError(f"weights must be finite and >= 0; got weights={weights.tolist()}")
    total = weights.sum()
    if not total > 0:
        raise AggregationError(f"weights must sum to > 0; got sum(weights)={float(total)}")
    return weights / total


class AggregationRule(ABC):
    """A Byzantine-robust (or plain) aggregation rule with its parameters bound.

    Subclasses set :attr:`name`, override :meth:`budget` when the paper states a precondition
    on the number of clients, and implement :meth:`aggregate` by calling their pure function.

    Attributes
    ----------
    name : str
        Short name of the rule, e.g. ``"krum"``.
    requires_server_update : bool
        True if :meth:`aggregate` needs the server's own update (FLTrust).
    is_stateful : bool
        True if the rule keeps history keyed by client id across calls (FoolsGold); drivers
        create one instance per FL job.
    """

    name: str = ""
    requires_server_update: bool = False
    is_stateful: bool = False
    # True if aggregate_factored takes factored updates as they are (FedAvg: a linear rule).
    accepts_factored: bool = False

    def budget(self) -> ClientBudget:
        """The fewest clients this rule accepts, with the formula from the paper."""
        return ClientBudget(self.name, 1)

    def min_clients(self) -> int:
        """Smallest ``num_clients`` for which the rule's precondition holds."""
        return self.budget().minimum

    def check_precondition(self, num_clients: int) -> None:
        """Raise :class:`ByzantineBudgetError` if the rule cannot run on ``num_clients``."""
        self.budget().check(num_clients)

    @abstractmethod
    def aggregate(
        self,
        updates: Tensor,
        *,
        weights: Tensor,
        client_ids: Sequence[int],
        server_update: Tensor | None = None,
    ) -> Tensor:
        """Aggregate ``updates`` of shape ``(num_clients, num_params)`` into ``(num_params,)``.

        Parameters
        ----------
        updates : Tensor
            Flattened client updates (client model minus global model), one row per client.
        weights : Tensor
            The clients' sample counts, shape ``(num_clients,)``; ignored by rules that do
            not weight (all but FedAvg and RFA).
        client_ids : Sequence[int]
            Client identifier of each row; used by stateful rules (FoolsGold).
        server_update : Tensor or None
            The server's update on its root data set; required by FLTrust only.

        Returns
        -------
        Tensor
            The aggregated update, shape ``(num_params,)``, same dtype as ``updates``.
        """

    def aggregate_factored(self, updates: Sequence[FactoredUpdate], *, weights: Tensor) -> Tensor:
        """Aggregate factored updates without multiplying them out (rules with ``accepts_factored``)."""
        raise NotImplementedError(f"{self.name} takes dense updates only")

    def step_factored_many(
        self,
        jobs: Sequence[Sequence[FactoredUpdate]],
        weights: Sequence[Tensor],
        start: Sequence[Tensor],
        *,
        scale: float = 1.0,
    ) -> list[Tensor]:
        """Each job's ``start + scale * aggregate_factored(updates)``, many jobs at once."""
        raise NotImplementedError(f"{self.name} takes dense updates only")

    def __call__(
        self,
        updates: Tensor,
        *,
        weights: Tensor | None = None,
        client_ids: Sequence[int] | None = None,
        server_update: Tensor | None = None,
    ) -> Tensor:
        """Check the precondition, then aggregate.

        ``weights`` default to equal weights and ``client_ids`` to ``range(num_clients)``.
        """
        num_clients = len(updates)
        self.check_precondition(num_clients)
        if weights is None:
            weights = torch.ones(num_clients, dtype=torch.float64)
        if client_ids is None:
            client_ids = range(num_clients)
        return self.aggregate(updates, weights=weights, client_ids=client_ids, server_update=server_update)

    def __repr__(self) -> str:
        parameters = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if not key.startswith("_"))
        return f"{type(self).__name__}({parameters})"


def check_client_ids(client_ids: Sequence[int], *, num_clients: int) -> tuple[int, ...]:
    """Return ``client_ids`` as a tuple after checking its length and uniqueness.

    Raises
    ------
    AggregationError
        If ``len(client_ids) != num_clients`` or an id repeats.
    """
    identifiers = tuple(client_ids)
    if len(identifiers) != num_clients:
        raise AggregationError(f"client_ids must have {num_clients} entries; got len(client_ids)={len(identifiers)}")
    if len(set(identifiers)) != len(identifiers):
        raise AggregationError(f"client_ids must be unique; got client_ids={list(identifiers)}")
    return identifiers


def require_positive_finite(name: str, value: float) -> float:
    """Return ``value`` if it is a finite number > 0, else raise ``ValueError`` naming it."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {name}={value!r}")
    return float(value)
