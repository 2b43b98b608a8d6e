"""The server role: the round protocol over any transport (:mod:`~fedshield.server.protocol`),
sampling and aggregation (:mod:`~fedshield.server.rounds`), evaluation with FLIP's rejection
(:mod:`~fedshield.server.evaluation`) and per-job checkpoints (:mod:`~fedshield.server.checkpoints`).

It never imports :mod:`fedshield.client`; the Flower ServerApp that carries it lives with the
drivers in :mod:`fedshield.engines.flower`.
"""
