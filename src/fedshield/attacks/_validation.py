"""Argument checks shared by the attacks; every failure is an :class:`AttackError`."""

from __future__ import annotations

import math

import torch

from fedshield.attacks.base import AttackError


def require_integer(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` if it is an ``int >= minimum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AttackError(f"{name} must be an integer >= {minimum}; got {name}={value!r}")
    return value


def require_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is finite and > 0 (>= 0 with ``allow_zero``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise AttackError(f"{name} must be a finite number {bound}; got {name}={value!r}")
    return float(value)


def check_updates(updates: object, *, name: str = "benign_updates", minimum_rows: int = 1) -> int:
    """Check for a 2-D floating tensor with at least ``minimum_rows`` rows; return its rows."""
    if not isinstance(updates, torch.Tensor):
        raise AttackError(f"{name} must be a 2-D tensor (num_clients, num_params); got {type(updates).__name__}")
    if updates.ndim != 2:
        raise AttackError(f"{name} must be a 2-D tensor (num_clients, num_params); got {tuple(updates.shape)}")
    if not updates.is_floating_point():
        raise AttackError(f"{name} must have a floating dtype; got dtype={updates.dtype}")
    if updates.shape[0] < minimum_rows:
        raise AttackError(f"{name} must have at least {minimum_rows} rows; got {updates.shape[0]}")
    return updates.shape[0]
