r"""Sign flipping: a malicious client sends its honest update negated and scaled.

A classic untargeted baseline (e.g. Damaskinos et al., "Asynchronous Byzantine Machine
Learning", ICML 2018; Li et al., "RSA: Byzantine-Robust Stochastic Aggregation Methods",
AAAI 2019): :math:`u' = -\text{scale} \cdot u`. It needs no knowledge of other clients, so it
is a :meth:`~fedshield.attacks.base.Attack.post_process` hook, not a crafted update.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedshield.attacks._validation import require_positive
from fedshield.attacks.base import Attack, Schedule


def sign_flip_attack(update: Tensor, *, scale: float = 1.0) -> Tensor:
    r"""Return :math:`-\text{scale} \cdot u` for the client's honest update :math:`u`."""
    scale = require_positive("scale", scale)
    return -scale * update


class SignFlipAttack(Attack):
    """Send ``-scale`` times the honest update in the active rounds.

    Parameters
    ----------
    num_malicious : int
        Malicious clients in the federation.
    schedule : Schedule or mapping
        Rounds in which the attack is active.
    scale : float
        Factor > 0 applied after the flip (1 is a pure sign flip).
    """

    name = "sign_flip"

    def __init__(
        self,
        *,
        num_malicious: int = 0,
        schedule: Schedule | Mapping[str, object] | None = None,
        scale: float = 1.0,
    ) -> None:
        super().__init__(num_malicious=num_malicious, schedule=schedule)
        self.scale = require_positive("attack.scale", scale)

    def post_process(self, update: torch.Tensor, *, server_round: int, num_sampled: int) -> torch.Tensor:
        if not self.is_active(server_round):
            return update
        return sign_flip_attack(update, scale=self.scale)
