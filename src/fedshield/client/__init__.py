"""The client role: what a client computes in a round (:mod:`~fedshield.client.work`).

It never imports :mod:`fedshield.server`; the Flower ClientApp that carries it lives with the
drivers in :mod:`fedshield.engines.flower`.
"""

from fedshield.client.work import craft_step, train_step

__all__ = ["craft_step", "train_step"]
