"""The server's math in one round of one FL job: whom to sample and how to aggregate.

Pure functions of (job, round, replies): both engines call them, and the order in which
replies arrive is erased by sorting them by user ID before anything else happens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedshield.experiment import Experiment
from fedshield.models.params import get_flat_params, set_flat_params
from fedshield.rules import AggregationRule, aggregate_screened, screen_updates
from fedshield.rules.screening import factored_bound_passes, factored_layout_matches
from fedshield.task.determinism import derive_seed, torch_generator
from fedshield.task.jobs import JobSpec
from fedshield.task.training import local_train
from fedshield.task.updates import FactoredUpdate, norm_bound

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundOutcome:
    """A job's new global parameters and what happened to the replies."""

    params: torch.Tensor
    num_replies: int
    rejected: tuple[tuple[int, str], ...]
    skipped_reason: str | None  # set when the model was kept unchanged


def sample_clients(job: JobSpec, server_round: int, *, num_sampled: int) -> tuple[int, ...]:
    """Seeded uniform sample of ``num_sampled`` of the job's clients, sorted by user ID."""
    rng = np.random.default_rng(derive_seed("sample", job.seed, server_round))
    chosen = rng.choice(len(job.client_ids), size=num_sampled, replace=False)
    return tuple(sorted(job.client_ids[int(i)] for i in chosen))


def sample_with_attackers(
    job: JobSpec, server_round: int, *, num_sampled: int, malicious: frozenset[int], num_attackers: int
) -> tuple[int, ...]:
    """Seeded sample of ``num_sampled`` clients holding exactly ``num_attackers`` malicious ones.

    The FLIP paper's protocol (Sec. 5.1): "in each round we randomly select 10 clients,
    including 4 adversaries and 6 benign clients". Attackers and benign clients are drawn
    uniformly without replacement from the job's malicious and benign clients; when the job
    holds fewer of one kind, the sample takes all of them and fills up with the other kind.
    Sorted by user ID.
    """
    bad = [uid for uid in job.client_ids if uid in malicious]
    good = [uid for uid in job.client_ids if uid not in malicious]
    take_bad = min(num_attackers, len(bad), num_sampled)
    take_good = min(num_sampled - take_bad, len(good))
    take_bad = num_sampled - take_good  # fill up with attackers when benign clients run out
    rng = np.random.default_rng(derive_seed("sample-attackers", job.seed, server_round))
    chosen = [bad[int(i)] for i in rng.choice(len(bad), size=take_bad, replace=False)]
    chosen += [good[int(i)] for i in rng.choice(len(good), size=take_good, replace=False)]
    return tuple(sorted(chosen))


def server_reference_update(
    experiment: Experiment, job: JobSpec, server_round: int, global_params: torch.Tensor
) -> torch.Tensor:
    """FLTrust's server update: the same local training, on the clean root set."""
    model = experiment.new_model()
    set_flat_params(model, global_params)
    x, y = experiment.root_set
    generator = torch_generator(derive_seed("server-update", job.seed, server_round))
    local_train(model, x, y, config=experiment.training, generator=generator)
    return get_flat_params(model) - global_params


def aggregate_round(
    rule: AggregationRule,
    global_params: torch.Tensor,
    replies: Mapping[int, object],
    num_examples: Mapping[int, int],
    *,
    max_update_norm: float,
    server_update: torch.Tensor | None = None,
    server_learning_rate: float = 1.0,
) -> RoundOutcome:
    """Screen the replies (drop malformed ones, logged), aggregate with ``rule``, step the model.

    ``replies`` maps user ID to the update it sent (anything: it is screened first). When too
    few valid replies remain for the rule, or the aggregate is not finite, the model is kept.
    """
    client_ids = sorted(replies)
    screened = screen_updates(
        [replies[uid] for uid in client_ids],
        client_ids,
        num_params=global_params.numel(),
        dtype=global_params.dtype,
        max_norm=max_update_norm,
    )
    aggregate, reason = aggregate_screened(
        rule, screened, weights_by_id={uid: float(num_examples[uid]) for uid in client_ids}, server_update=server_update
    )
    if aggregate is None:
        logger.warning("keeping the model unchanged this round: %s", reason)
        return RoundOutcome(global_params, len(client_ids), screened.rejected, reason)
    # eta = 1 adds the aggregate as is (bit-identical to runs before eta existed).
    step = aggregate if server_learning_rate == 1.0 else server_learning_rate * aggregate
    return RoundOutcome(global_params + step, len(client_ids), screened.rejected, None)


def aggregate_factored_rounds(
    rules: Sequence[AggregationRule],
    global_params: Sequence[torch.Tensor],
    replies: Sequence[Mapping[int, object]],
    num_examples: Sequence[Mapping[int, int]],
    *,
    max_update_norm: float,
    server_learning_rate: float = 1.0,
) -> list[RoundOutcome | None]:
    """:func:`aggregate_round` for many jobs at once where that is certain to keep every reply:
    the job's rule averages factored updates (FedAvg), every reply is a
    :class:`~fedshield.task.updates.FactoredUpdate` of the job's layout, and screening keeps each
    by its norm bound (:func:`~fedshield.rules.screening.factored_bound_passes`, the norms of
    all factors of all jobs in one call). Those jobs step together
    (:meth:`~fedshield.rules.AggregationRule.step_factored_many`: the factors of all jobs
    stacked once, then one ``addmm`` per job from its parameters); every other job gets None and
    takes :func:`aggregate_round`. The mean needs no finiteness check: every entry of every kept
    update is at most its bound (<= 1e30) in magnitude, and so is a weighted mean of them.
    """
    outcomes: list[RoundOutcome | None] = [None] * len(rules)
    candidates: list[tuple[int, list[int], list[FactoredUpdate]]] = []
    factors: list[torch.Tensor] = []
    for job, (rule, params, job_replies) in enumerate(zip(rules, global_params, replies, strict=True)):
        client_ids = sorted(job_replies)
        sent = [job_replies[uid] for uid in client_ids]
        if not (rule.accepts_factored and type(rule) is type(rules[0]) and len(sent) >= rule.min_clients()):
            continue
        factored = [u for u in sent if isinstance(u, FactoredUpdate)]
        if len(factored) < len(sent) or not all(
            factored_layout_matches(u, num_params=params.numel(), dtype=params.dtype, device=params.device)
            for u in factored
        ):
            continue
        candidates.append((job, client_ids, factored))
        factors += [t for u in factored for t in (u.left, u.right, u.tail)]
    if not candidates:
        return outcomes
    norms = torch.stack(torch._foreach_norm(factors, 2, dtype=torch.float64)).tolist()
    kept: list[tuple[int, list[int], list[FactoredUpdate]]] = []
    position = 0
    for job, client_ids, updates in candidates:
        bounds = [norm_bound(*norms[position + 3 * i : position + 3 * i + 3]) for i in range(len(updates))]
        position += 3 * len(updates)
        dtype = global_params[job].dtype
        if all(
            factored_bound_passes(bound, samples=u.left.shape[1], dtype=dtype, max_norm=max_update_norm)
            for bound, u in zip(bounds, updates, strict=True)
        ):
            kept.append((job, client_ids, updates))
    if not kept:
        return outcomes
    weights = [
        torch.tensor([float(num_examples[job][uid]) for uid in client_ids], dtype=torch.float64)
        for job, client_ids, _ in kept
    ]
    # One addmm per job from its parameters: the same step as aggregate_round's
    # params + eta * mean, up to the product's rounding, each job's parameters their own tensor.
    stepped = rules[kept[0][0]].step_factored_many(
        [updates for _, _, updates in kept],
        weights,
        [global_params[job] for job, _, _ in kept],
        scale=server_learning_rate,
    )
    for params, (job, client_ids, _) in zip(stepped, kept, strict=True):
        outcomes[job] = RoundOutcome(params, len(client_ids), (), None)
    return outcomes
