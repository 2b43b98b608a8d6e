"""Errors raised by the rules; both subclass ``ValueError`` so callers may catch either."""

from __future__ import annotations


class ByzantineBudgetError(ValueError):
    """A rule's precondition on the number of clients does not hold.

    Raised, for example, when Krum receives fewer than ``2 * num_malicious + 3`` updates. The
    message names the parameter, the bound and the value received. A driver that catches it
    keeps the global model unchanged for the round (see :mod:`fedshield.rules.screening`).
    """


class AggregationError(ValueError):
    """A rule's input is malformed: wrong shape or dtype, missing server update, bad weights."""
