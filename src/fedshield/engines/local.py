"""``engine=local``: train the jobs in worker processes that call the client code directly.

It is a second *driver*, not a second implementation: every round goes through
:func:`fedshield.server.protocol.run_round` with a transport that calls
:mod:`fedshield.client.work` in-process. Each worker runs whole jobs, one torch thread each
(measured here: two such workers are about twice as fast as one process with two threads),
and the parent checkpoints every job as soon as it finishes.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed

from fedshield.client.work import craft_step, train_step
from fedshield.config.build import experiment_from_yaml
from fedshield.engines.base import FinishedJob, OnJobDone, OnRound
from fedshield.experiment import Experiment
from fedshield.server.protocol import Replies, run_jobs
from fedshield.task.defense import ClientState
from fedshield.task.determinism import configure_torch
from fedshield.task.jobs import JobSpec
from fedshield.task.messages import CraftRequest, ReplyKey, TrainRequest


class InProcessTransport:
    """Calls the client functions directly; keeps each client's per-job state in a dict."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.client_states: dict[ReplyKey, ClientState] = {}

    def train(self, requests: list[TrainRequest]) -> Replies:
        replies: Replies = {}
        for request in requests:
            replies[request.key], self.client_states[request.key] = train_step(
                self.experiment, request, self.client_states.get(request.key)
            )
        return replies

    def craft(self, requests: list[CraftRequest]) -> Replies:
        return {request.key: craft_step(self.experiment, request) for request in requests}


def train_one_job(experiment: Experiment, job: JobSpec, on_round: OnRound | None = None) -> FinishedJob:
    (state,) = run_jobs(experiment, [job], InProcessTransport(experiment), on_round=on_round)
    return FinishedJob(job.job_id, state.params, state.history, state.predictions)


def _worker_init() -> None:
    configure_torch(threads=1)


def _worker_train(config_yaml: str, job: JobSpec) -> FinishedJob:
    return train_one_job(experiment_from_yaml(config_yaml), job)


class LocalEngine:
    name = "local"

    def __init__(self, *, workers: int = 2) -> None:
        if workers < 1:
            raise ValueError(f"engine.workers must be >= 1; got {workers}")
        self.workers = workers

    def train(
        self,
        experiment: Experiment,
        jobs: list[JobSpec],
        *,
        on_job_done: OnJobDone,
        on_progress: OnRound | None = None,
    ) -> None:
        """Train ``jobs``; call ``on_job_done`` (in this process) as each one finishes."""
        if self.workers == 1 or len(jobs) == 1:
            for job in jobs:  # in this process: report each round
                on_job_done(train_one_job(experiment, job, on_progress))
            return
        context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
        with ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_init) as pool:
            futures = [pool.submit(_worker_train, experiment.config_yaml, job) for job in jobs]
            for future in as_completed(futures):
                on_job_done(future.result())
