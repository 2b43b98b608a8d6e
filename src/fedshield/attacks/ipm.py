r"""Inner Product Manipulation (IPM) [Xie et al., 2020].

Every colluder sends :math:`-\epsilon` times the mean benign update, so that the inner product
of the aggregate with the true mean update turns negative (for the mean, once
:math:`\epsilon > (n - q) / q`; for robust rules that keep the small crafted updates, for any
:math:`\epsilon > 0`).

Xie, Koyejo, Gupta. "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
Manipulation." UAI 2020. https://arxiv.org/abs/1903.03936
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedshield.attacks._validation import check_updates, require_integer, require_positive
from fedshield.attacks.base import CraftContext, CraftingAttack, Schedule


def ipm_attack(benign_updates: Tensor, *, num_malicious: int, epsilon: float = 0.1) -> Tensor:
    r"""IPM's crafted update :math:`-\epsilon \cdot \frac{1}{|B|} \sum_{b \in B} u_b`.

    [Xie et al., 2020, Section 4: :math:`u_i = -\epsilon \bar{v}` for every Byzantine
    worker, :math:`\bar{v}` the mean of the correct gradients.]

    Parameters
    ----------
    benign_updates : Tensor
        Shape ``(num_benign, num_params)``, ``num_benign >= 1``.
    num_malicious : int
        Number of crafted updates, >= 1.
    epsilon : float
        :math:`\epsilon > 0` (the paper uses 0.1 against Krum and larger values, e.g. 10 or
        100, against Median and Trimmed mean).

    Returns
    -------
    Tensor
        Shape ``(num_malicious, num_params)``, dtype and device of ``benign_updates``.
    """
    check_updates(benign_updates)
    require_integer("num_malicious", num_malicious, minimum=1)
    epsilon = require_positive("epsilon", epsilon)
    crafted = -epsilon * benign_updates.to(torch.float64).mean(dim=0)
    return crafted.expand(num_malicious, -1).to(benign_updates.dtype).clone()


class IPMAttack(CraftingAttack):
    """Inner Product Manipulation; see :func:`ipm_attack` (mean over the round's benign rows).

    Parameters
    ----------
    num_malicious : int
        Malicious clients in the federation.
    schedule : Schedule or mapping
        Rounds in which the attack is active.
    epsilon : float
        :math:`\\epsilon > 0`.
    """

    name = "ipm"

    def __init__(
        self,
        *,
        num_malicious: int = 0,
        schedule: Schedule | Mapping[str, object] | None = None,
        epsilon: float = 0.1,
    ) -> None:
        super().__init__(num_malicious=num_malicious, schedule=schedule)
        self.epsilon = require_positive("attack.epsilon", epsilon)

    def craft_all(self, context: CraftContext) -> Tensor:
        return ipm_attack(context.benign_rows, num_malicious=len(context.malicious_ids), epsilon=self.epsilon)
