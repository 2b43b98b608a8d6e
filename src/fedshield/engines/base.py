"""The one interface both drivers implement: train some jobs of an experiment.

An engine runs the round protocol (:mod:`fedshield.server.protocol`) over its own transport
and reports each job as it finishes; the pipeline (:mod:`fedshield.run`) checkpoints it then,
so a killed run loses at most the jobs in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from fedshield.experiment import Experiment
from fedshield.task.jobs import JobSpec


@dataclass(frozen=True)
class FinishedJob:
    """A trained job: its final global parameters, one record per round, and the final model's
    predicted test labels (from its last evaluation; None from a checkpoint that predates them)."""

    job_id: int
    params: torch.Tensor
    history: list[dict]
    predictions: torch.Tensor | None = None


OnJobDone = Callable[[FinishedJob], None]
# Called with (job_id, server_round) once each job finishes each round.
OnRound = Callable[[int, int], None]


class Engine(Protocol):
    """Trains jobs; ``on_job_done`` is called in the caller's process as each job finishes,
    ``on_progress`` there too, with (job ID, round) as each job finishes each round."""

    name: str
    # Which client-training path the last train() took and why (summary.json), or None when the
    # engine has only the per-client one.
    client_training: dict | None

    def train(
        self,
        experiment: Experiment,
        jobs: list[JobSpec],
        *,
        on_job_done: OnJobDone,
        on_progress: OnRound | None = None,
    ) -> None: ...
