"""Rounds of many FL jobs side by side, over any transport that can reach the clients.

The round protocol lives here once. A *transport* carries client work: the in-process engine
calls :mod:`fedshield.client.work` directly, the Flower engine sends messages to ClientApps
that call the same functions. Everything else (sampling, phase-2 crafting, screening,
aggregation, evaluation) happens here, identically for both.

One round, for every job of a wave:

1. :func:`sample_round`: each job's seeded sample of clients;
2. phase 1: one :class:`TrainRequest` per sampled client, all jobs in one ``transport.train``;
3. phase 2 (:func:`craft_requests`): the round's updates go to the sampled malicious clients of
   a full-knowledge attack, all jobs in one ``transport.craft``;
4. :func:`finish_job_round`: screen, aggregate, post-process (CRFL), record and evaluate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch

from fedshield.experiment import Experiment
from fedshield.models.params import get_flat_params
from fedshield.rules import AggregationRule
from fedshield.server.evaluation import evaluate_params, evaluate_with_predictions
from fedshield.server.rounds import (
    RoundOutcome,
    aggregate_factored_rounds,
    aggregate_round,
    sample_clients,
    sample_with_attackers,
    server_reference_update,
)
from fedshield.task.jobs import JobSpec
from fedshield.task.messages import ClientReply, CraftRequest, ReplyKey, TrainRequest
from fedshield.task.updates import FactoredUpdate, dense_update

Replies = dict[ReplyKey, ClientReply | None]


class Transport(Protocol):
    """Carries a round's client work; a missing reply (vanished client) is None."""

    def train(self, requests: list[TrainRequest]) -> Replies: ...

    def craft(self, requests: list[CraftRequest]) -> Replies: ...


@dataclass
class JobState:
    job: JobSpec
    params: torch.Tensor
    rule: AggregationRule
    history: list[dict] = field(default_factory=list)
    # The final model's predicted test labels, set by the last round's evaluation: the votes.
    predictions: torch.Tensor | None = None


def start_jobs(experiment: Experiment, jobs: Iterable[JobSpec]) -> list[JobState]:
    return [JobState(job, get_flat_params(experiment.initial_model(job)), experiment.new_rule()) for job in jobs]


def sample_round(experiment: Experiment, states: list[JobState], server_round: int) -> dict[int, tuple[int, ...]]:
    """Each job's sampled user IDs (sorted), keyed by job ID.

    Uniform, unless ``attackers_per_round`` is set and the attack is active this round: then
    each job's sample holds that many of its malicious clients (the FLIP paper's protocol).
    """
    attackers = experiment.settings.attackers_per_round
    if attackers is None or not experiment.attack.is_active(server_round):
        return {
            s.job.job_id: sample_clients(s.job, server_round, num_sampled=experiment.num_sampled(s.job)) for s in states
        }
    return {
        s.job.job_id: sample_with_attackers(
            s.job,
            server_round,
            num_sampled=experiment.num_sampled(s.job),
            malicious=experiment.malicious_ids,
            num_attackers=attackers,
        )
        for s in states
    }


def train_requests(
    states: list[JobState], sampled: Mapping[int, tuple[int, ...]], server_round: int
) -> list[TrainRequest]:
    return [
        TrainRequest(s.job, uid, server_round, s.params, len(sampled[s.job.job_id]))
        for s in states
        for uid in sampled[s.job.job_id]
    ]


def craft_requests(
    experiment: Experiment,
    states: list[JobState],
    sampled: Mapping[int, tuple[int, ...]],
    replies: Replies,
    server_round: int,
) -> list[CraftRequest]:
    """Phase-2 requests: every job whose crafting clients all replied in phase 1 sends them the
    phase-1 updates of the clients that replied (in user-ID order)."""
    requests = []
    for s in states:
        ids = sampled[s.job.job_id]
        crafting = experiment.crafting_clients(server_round, ids)
        arrived = [uid for uid in ids if replies.get((s.job.job_id, uid)) is not None]
        if not crafting or any(uid not in arrived for uid in crafting):
            continue
        arrived_replies = [replies[(s.job.job_id, uid)] for uid in arrived]
        updates = torch.stack([dense_update(reply.update) for reply in arrived_replies if reply is not None])
        weights = torch.tensor(
            [float(reply.num_examples) for reply in arrived_replies if reply is not None], dtype=updates.dtype
        )
        requests += [
            CraftRequest(s.job, uid, server_round, tuple(arrived), updates, weights, s.params) for uid in crafting
        ]
    return requests


def finish_job_round(
    experiment: Experiment,
    state: JobState,
    sampled: tuple[int, ...],
    replies: Replies,
    server_round: int,
    *,
    started: float,
    outcome: RoundOutcome | None = None,
) -> None:
    """Aggregate one job's replies into its new model (unless ``outcome``, from
    :func:`aggregate_factored_rounds`, already did) and append the round's record."""
    job_replies = {uid: replies.get((state.job.job_id, uid)) for uid in sampled}
    # A client that vanished (no reply) is left out, exactly as if it had not been sampled.
    arrived = {uid: reply for uid, reply in job_replies.items() if reply is not None}
    if outcome is None:
        server_update = (
            server_reference_update(experiment, state.job, server_round, state.params)
            if state.rule.requires_server_update
            else None
        )
        outcome = aggregate_round(
            state.rule,
            state.params,
            {uid: reply.update for uid, reply in arrived.items()},
            {uid: reply.num_examples for uid, reply in arrived.items()},
            max_update_norm=experiment.settings.max_update_norm,
            server_update=server_update,
            server_learning_rate=experiment.settings.server_learning_rate,
        )
    state.params = experiment.ensemble.postprocess_round(
        outcome.params, job_seed=state.job.seed, server_round=server_round
    )
    record = {
        "round": server_round,
        "participants": sorted(arrived),
        "sampled": len(job_replies),
        "replies": len(arrived),
        "missing": len(job_replies) - len(arrived),
        "rejected": len(outcome.rejected),
        "kept_model": outcome.skipped_reason is not None,
        "train_loss": _mean([r.loss for r in arrived.values() if r.loss == r.loss]),
        "wall_time": time.perf_counter() - started,
        **client_metrics(list(arrived.values())),
    }
    every = experiment.settings.eval_every
    if server_round == experiment.num_rounds:  # always evaluated, whatever eval_every
        metrics, state.predictions = evaluate_with_predictions(experiment, state.params)
        record.update(metrics)
    elif every > 0 and server_round % every == 0:
        record.update(evaluate_params(experiment, state.params))
    state.history.append(record)


def run_round(experiment: Experiment, states: list[JobState], server_round: int, transport: Transport) -> None:
    """One round for every job in ``states``: sample, train, craft, screen, aggregate, evaluate."""
    started = time.perf_counter()
    sampled = sample_round(experiment, states, server_round)
    replies = transport.train(train_requests(states, sampled, server_round))
    crafting = craft_requests(experiment, states, sampled, replies, server_round)
    if crafting:
        replies.update(transport.craft(crafting))
    outcomes = _factored_outcomes(experiment, states, sampled, replies)
    for s, outcome in zip(states, outcomes, strict=True):
        finish_job_round(experiment, s, sampled[s.job.job_id], replies, server_round, started=started, outcome=outcome)


def _factored_outcomes(
    experiment: Experiment, states: list[JobState], sampled: Mapping[int, tuple[int, ...]], replies: Replies
) -> list[RoundOutcome | None]:
    """The round's outcome of every job :func:`aggregate_factored_rounds` can aggregate at once
    (only engine=local's batched clients send factored updates; the others get None)."""
    if not any(reply is not None and isinstance(reply.update, FactoredUpdate) for reply in replies.values()):
        return [None] * len(states)
    arrived = [
        {uid: reply for uid in sampled[s.job.job_id] if (reply := replies.get((s.job.job_id, uid))) is not None}
        for s in states
    ]
    return aggregate_factored_rounds(
        [s.rule for s in states],
        [s.params for s in states],
        [{uid: reply.update for uid, reply in job.items()} for job in arrived],
        [{uid: reply.num_examples for uid, reply in job.items()} for job in arrived],
        max_update_norm=experiment.settings.max_update_norm,
        server_learning_rate=experiment.settings.server_learning_rate,
    )


def run_jobs(
    experiment: Experiment,
    jobs: list[JobSpec],
    transport: Transport,
    *,
    on_round: Callable[[int, int], None] | None = None,
) -> list[JobState]:
    """Train ``jobs`` side by side for ``num_rounds`` rounds; return their final states.
    ``on_round(job_id, server_round)`` follows each job's every round."""
    states = start_jobs(experiment, jobs)
    for server_round in range(1, experiment.num_rounds + 1):
        run_round(experiment, states, server_round, transport)
        if on_round is not None:
            for state in states:
                on_round(state.job.job_id, server_round)
    return states


def client_metrics(replies: list[ClientReply]) -> dict[str, float]:
    """Mean of each diagnostic the replies carry (over the replies that carry it; NaNs skipped)."""
    keys = sorted({key for reply in replies for key in reply.metrics})
    return {
        key: _mean([r.metrics[key] for r in replies if key in r.metrics and r.metrics[key] == r.metrics[key]])
        for key in keys
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
