"""The drivers: one :class:`~fedshield.engines.base.Engine` interface, two implementations.

- :class:`~fedshield.engines.local.LocalEngine` (``engine=local``): worker processes that call
  :mod:`fedshield.client.work` in-process;
- :class:`~fedshield.engines.flower.simulation.FlowerEngine` (``engine=flower``): Flower's
  ServerApp and ClientApps on Ray, and :class:`~fedshield.engines.flower.grid.GridEngine` for a
  Grid a ServerApp is given (``flwr run .`` on a SuperLink).

Both run the same round protocol (:mod:`fedshield.server.protocol`).
"""

from fedshield.engines.base import Engine, FinishedJob

__all__ = ["Engine", "FinishedJob"]
