"""The server's math in one round of one FL job: whom to sample and how to aggregate.

Pure functions of (job, round, replies): both engines call them, and the order in which
replies arrive is erased by sorting them by user ID before anything else happens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedshield.experiment import Experiment
from fedshield.models.params import get_flat_params, set_flat_params
from fedshield.rules import AggregationRule, aggregate_screened, screen_updates
from fedshield.task.determinism import derive_seed, torch_generator
from fedshield.task.jobs import JobSpec
from fedshield.task.training import local_train

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
