"""``engine=local``: train the jobs in worker processes that call the client code directly.

It is a second *driver*, not a second implementation: every round goes through
:func:`fedshield.server.protocol.run_round` with a transport that calls
:mod:`fedshield.client.work` in-process. Each worker runs whole jobs, one torch thread each
(measured here: two such workers are about twice as fast as one process with two threads),
and the parent checkpoints every job as soon as it finishes. Workers send each finished
job-round to the parent over a queue, so progress shows round by round there too.

``engine.batch_clients`` (``auto``, ``true``, ``false``): for a model made of Linear layers and
ReLUs (logistic regression, the MLP), the honest clients of a round train together over
stacked weights (:mod:`fedshield.client.batched`), and the jobs of a wave advance in lockstep so
that a round has many clients to batch. A job-round with an active sampled attacker, FLIP
hardening, or an unsupported model (the CNN) goes through the per-client path, exactly as with
``false``. The batched path equals the per-client one up to float reassociation, not bit for bit.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing.queues import SimpleQueue

from fedshield.client.batched import (
    DEFERRED_CHUNK,
    LinearStack,
    chunk_size_for,
    linear_stack,
    train_clients_batched,
)
from fedshield.client.work import craft_step, train_step
from fedshield.config.build import experiment_from_yaml
from fedshield.engines.base import FinishedJob, OnJobDone, OnRound
from fedshield.experiment import Experiment
from fedshield.server.protocol import Replies, run_jobs
from fedshield.task.defense import ClientState
from fedshield.task.determinism import configure_torch
from fedshield.task.jobs import JobSpec
from fedshield.task.memory import keep_freed_memory
from fedshield.task.messages import CraftRequest, ReplyKey, TrainRequest

logger = logging.getLogger(__name__)

# Jobs that advance in lockstep in one worker when clients are batched: enough clients per
# round to fill the chunks; a killed run loses at most the waves in flight.
GROUPS_PER_WAVE = 50

# How often the parent collects the workers' finished rounds while it waits for jobs.
PROGRESS_POLL_SECONDS = 0.2


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


class BatchedTransport(InProcessTransport):
    """Trains a round's plain-SGD job-rounds together (:func:`train_clients_batched`); a job whose
    sample holds an active attacker this round goes client by client, as :class:`InProcessTransport`."""

    def __init__(self, experiment: Experiment, stack: LinearStack, chunk_size: int) -> None:
        super().__init__(experiment)
        self.stack = stack
        self.chunk_size = chunk_size

    def train(self, requests: list[TrainRequest]) -> Replies:
        attacked_jobs = {request.job.job_id for request in requests if self._attacking(request)}
        batched = [request for request in requests if request.job.job_id not in attacked_jobs]
        replies = super().train([request for request in requests if request.job.job_id in attacked_jobs])
        for request, reply in zip(
            batched,
            train_clients_batched(self.experiment, batched, self.stack, chunk_size=self.chunk_size),
            strict=True,
        ):
            replies[request.key] = reply
        return replies

    def _attacking(self, request: TrainRequest) -> bool:
        return self.experiment.is_malicious(request.user_id) and self.experiment.attack.is_active(request.server_round)


def client_training(experiment: Experiment, batch_clients: bool | str) -> dict:
    """Which client path a run takes (recorded in summary.json): ``path`` ("batched" or
    "per-client"), ``chunk_size`` and ``reason``."""
    if batch_clients is False:
        return {"path": "per-client", "chunk_size": None, "reason": "engine.batch_clients=false"}
    model = experiment.new_model()
    stack = linear_stack(model)
    if stack is None:
        reason = (
            f"model {type(model).__name__} is not a stack of Linear layers and ReLUs; there is no batched "
            "form for convolutions (stacked grouped convolutions measured at most 1.1-1.3x the per-client "
            "loop for the CNN, against 3x for the MLP: bench/README.md)"
        )
        return {"path": "per-client", "chunk_size": None, "reason": reason}
    if experiment.hardening is not None:
        return {"path": "per-client", "chunk_size": None, "reason": "a defense hardens the clients' training"}
    reason = "plain SGD over stacked per-client weights"
    training = experiment.training
    deferred = training.plain_sgd
    if deferred:
        reason += "; first layer in factored form for clients with few samples"
    if experiment.malicious_ids:
        reason += "; per-client in job-rounds with an active sampled attacker"
    return {
        "path": "batched",
        "chunk_size": chunk_size_for(stack, experiment.dtype),
        "deferred_chunk_size": DEFERRED_CHUNK if deferred else None,
        "reason": reason,
    }


def new_transport(experiment: Experiment, batch_clients: bool | str) -> InProcessTransport:
    choice = client_training(experiment, batch_clients)
    if choice["path"] != "batched":
        return InProcessTransport(experiment)
    stack = linear_stack(experiment.new_model())
    assert stack is not None  # client_training chose "batched"
    return BatchedTransport(experiment, stack, choice["chunk_size"])


def train_one_job(experiment: Experiment, job: JobSpec, on_round: OnRound | None = None) -> FinishedJob:
    (state,) = run_jobs(experiment, [job], InProcessTransport(experiment), on_round=on_round)
    return FinishedJob(job.job_id, state.params, state.history, state.predictions)


def train_wave(
    experiment: Experiment, jobs: list[JobSpec], batch_clients: bool | str, on_round: OnRound | None = None
) -> list[FinishedJob]:
    """``jobs`` in lockstep, round by round, over the transport ``batch_clients`` selects."""
    states = run_jobs(experiment, jobs, new_transport(experiment, batch_clients), on_round=on_round)
    return [FinishedJob(s.job.job_id, s.params, s.history, s.predictions) for s in states]


# A worker's queue of finished (job_id, server_round) to the parent; set by _worker_init.
_rounds_to_parent: SimpleQueue | None = None


def _worker_init(rounds_to_parent: SimpleQueue) -> None:
    global _rounds_to_parent
    _rounds_to_parent = rounds_to_parent
    configure_torch(threads=1)
    keep_freed_memory()


def _report_round(job_id: int, server_round: int) -> None:
    # SimpleQueue.put writes to the pipe before it returns: the parent can read a job's rounds
    # as soon as it sees the job's result.
    assert _rounds_to_parent is not None  # set by _worker_init
    _rounds_to_parent.put((job_id, server_round))


def _worker_train(config_yaml: str, job: JobSpec) -> FinishedJob:
    return train_one_job(experiment_from_yaml(config_yaml), job, _report_round)


def _worker_train_wave(config_yaml: str, jobs: list[JobSpec], batch_clients: bool | str) -> list[FinishedJob]:
    return train_wave(experiment_from_yaml(config_yaml), jobs, batch_clients, _report_round)


def run_in_workers(
    workers: int,
    calls: Iterable[tuple[Callable, tuple]],
    *,
    on_result: Callable,
    on_progress: OnRound | None,
) -> None:
    """Each ``(function, args)`` in a pool of spawned workers; ``on_result`` with each result and
    ``on_progress`` with each round the workers report, both in this process and thread, a
    job's rounds before its result. On any error (a worker crash, an exception from a callback,
    KeyboardInterrupt) the pending calls are cancelled and the workers stopped, not waited for."""
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    rounds: SimpleQueue = context.SimpleQueue()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(rounds,))
    pending: set[Future] = set()
    try:
        pending = {pool.submit(function, *args) for function, args in calls}
        while pending:
            done, pending = wait(pending, timeout=PROGRESS_POLL_SECONDS, return_when=FIRST_COMPLETED)
            # Rounds first: a finished job's rounds are in the queue before its result arrives.
            while not rounds.empty():
                job_id, server_round = rounds.get()
                if on_progress is not None:
                    on_progress(job_id, server_round)
            for future in done:
                on_result(future.result())
    except BaseException:
        for future in pending:
            future.cancel()
        # Jobs in flight would otherwise run to their end (minutes) before shutdown returns; the
        # pool sees its workers gone and its manager thread ends.
        for process in list((pool._processes or {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        rounds.close()


def check_batch_clients(value: object) -> bool | str:
    """``auto``, ``true`` or ``false`` (Hydra passes the latter two as booleans)."""
    if isinstance(value, bool):
        return value
    choices: dict[str, bool | str] = {"auto": "auto", "true": True, "false": False}
    if isinstance(value, str) and value.lower() in choices:
        return choices[value.lower()]
    raise ValueError(f"engine.batch_clients: must be auto, true or false; got {value!r}")


class LocalEngine:
    name = "local"

    def __init__(self, *, workers: int = 2, batch_clients: bool | str = "auto") -> None:
        if workers < 1:
            raise ValueError(f"engine.workers must be >= 1; got {workers}")
        self.workers = workers
        self.batch_clients = check_batch_clients(batch_clients)
        self.client_training: dict | None = None  # set by train(): which client path ran

    def train(
        self,
        experiment: Experiment,
        jobs: list[JobSpec],
        *,
        on_job_done: OnJobDone,
        on_progress: OnRound | None = None,
    ) -> None:
        """Train ``jobs``; call ``on_job_done`` (in this process) as each one finishes."""
        keep_freed_memory()  # this process trains when workers=1, and gathers the results otherwise
        self.client_training = client_training(experiment, self.batch_clients)
        logger.info("engine=local: %s clients (%s)", self.client_training["path"], self.client_training["reason"])
        if self.client_training["path"] == "batched":
            self._train_waves(experiment, jobs, on_job_done=on_job_done, on_progress=on_progress)
            return
        if self.workers == 1 or len(jobs) == 1:
            for job in jobs:  # in this process: report each round
                on_job_done(train_one_job(experiment, job, on_progress))
            return
        run_in_workers(
            self.workers,
            [(_worker_train, (experiment.config_yaml, job)) for job in jobs],
            on_result=on_job_done,
            on_progress=on_progress,
        )

    def _train_waves(
        self, experiment: Experiment, jobs: list[JobSpec], *, on_job_done: OnJobDone, on_progress: OnRound | None
    ) -> None:
        size = min(GROUPS_PER_WAVE, math.ceil(len(jobs) / self.workers))
        waves = [jobs[start : start + size] for start in range(0, len(jobs), size)]
        if self.workers == 1 or len(waves) == 1:
            for wave in waves:
                for finished in train_wave(experiment, wave, self.batch_clients, on_progress):
                    on_job_done(finished)
            return

        def on_wave_done(finished_jobs: list[FinishedJob]) -> None:
            for finished in finished_jobs:
                on_job_done(finished)

        run_in_workers(
            self.workers,
            [(_worker_train_wave, (experiment.config_yaml, wave, self.batch_clients)) for wave in waves],
            on_result=on_wave_done,
            on_progress=on_progress,
        )
