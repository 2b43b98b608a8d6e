"""What travels in one round: the server's requests to a client and the client's reply.

Phase 1 (:class:`TrainRequest`) goes to every sampled client; phase 2 (:class:`CraftRequest`)
only to the sampled malicious clients of a full-knowledge attack, with the round's phase-1
updates (see :mod:`fedshield.attacks.base`). A driver carries these however it likes (a
function call, a Flower message); the key of a reply is ``(job_id, user_id)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedshield.task.jobs import JobSpec
from fedshield.task.updates import FactoredUpdate

ReplyKey = tuple[int, int]  # (job_id, user_id)


@dataclass(frozen=True)
class ClientReply:
    # A FactoredUpdate only from engine=local's batched clients (fedshield.task.updates).
    update: torch.Tensor | FactoredUpdate
    num_examples: int
    loss: float
    # Diagnostics the server averages into the round's record (e.g. FLIP's inverted-mask size).
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainRequest:
    job: JobSpec
    user_id: int
    server_round: int
    global_params: torch.Tensor
    num_sampled: int

    @property
    def key(self) -> ReplyKey:
        return (self.job.job_id, self.user_id)


@dataclass(frozen=True)
class CraftRequest:
    job: JobSpec
    user_id: int
    server_round: int
    sampled: tuple[int, ...]
    updates: torch.Tensor
    weights: torch.Tensor
    global_params: torch.Tensor

    @property
    def key(self) -> ReplyKey:
        return (self.job.job_id, self.user_id)
