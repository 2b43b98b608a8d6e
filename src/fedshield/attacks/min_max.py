r"""The AGR-agnostic Min-Max attack [Shejwalkar and Houmansadr, 2021].

All colluders send :math:`\nabla^m = \mu + \gamma \nabla^p`, the benign mean :math:`\mu` moved
along a fixed perturbation :math:`\nabla^p` as far as possible while the crafted update stays no
farther from any benign update than the two farthest benign updates are from each other:

.. math::

    \max_\gamma \; \gamma \quad \text{s.t.} \quad
    \max_{i \in B} \|\nabla^m - \nabla_i\|_2 \le \max_{i, j \in B} \|\nabla_i - \nabla_j\|_2.

Shejwalkar, Houmansadr. "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and
Defenses for Federated Learning." NDSS 2021, Section IV (AGR-agnostic attacks, Min-Max) and
Algorithm 1 (the search for :math:`\gamma`).
https://www.ndss-symposium.org/ndss-paper/manipulating-the-byzantine-optimizing-model-poisoning-attacks-and-defenses-for-federated-learning/
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedshield.attacks._validation import check_updates, require_integer, require_positive
from fedshield.attacks.base import AttackError, CraftContext, CraftingAttack, Schedule

PERTURBATIONS = ("unit_vector", "std", "sign")


def min_max_perturbation(benign_updates: Tensor, *, perturbation: str = "unit_vector") -> Tensor:
    r"""The perturbation :math:`\nabla^p` of the paper's Section IV, in float64.

    * ``"unit_vector"`` (inverse unit vector): :math:`-\mu / \|\mu\|_2`;
    * ``"std"`` (inverse standard deviation): :math:`-\sigma`, the coordinate-wise
      (population) standard deviation of the benign updates;
    * ``"sign"`` (inverse sign): :math:`-\operatorname{sign}(\mu)`.

    A zero mean gives a zero ``"unit_vector"`` perturbation.
    """
    if perturbation not in PERTURBATIONS:
        raise AttackError(f"perturbation must be one of {PERTURBATIONS}; got {perturbation!r}")
    check_updates(benign_updates)
    benign = benign_updates.detach().to(device="cpu", dtype=torch.float64)
    mean = benign.mean(dim=0)
    if perturbation == "unit_vector":
        norm = mean.norm()
        return -mean / norm if norm > 0 else torch.zeros_like(mean)
    if perturbation == "std":
        return -benign.std(dim=0, correction=0)
    return -torch.sign(mean)


def _max_distance(points: Tensor, point: Tensor) -> float:
    return float((points - point).square().sum(dim=1).max().sqrt())


def min_max_gamma(benign_updates: Tensor, *, direction: Tensor, tolerance: float = 1e-5) -> float:
    r"""Largest :math:`\gamma \ge 0` with :math:`\max_i \|\mu + \gamma p - \nabla_i\| \le
    \max_{i,j} \|\nabla_i - \nabla_j\|`, to within ``tolerance``.

    :math:`\gamma = 0` is always feasible (:math:`\|\mu - \nabla_i\| \le \max_j
    \|\nabla_j - \nabla_i\|` by the triangle inequality), and the constraint's left side is
    convex in :math:`\gamma`, so the feasible :math:`\gamma \ge 0` form an interval
    :math:`[0, \gamma^*]`. Like the paper's Algorithm 1 this is a binary search; instead of
    starting from a fixed :math:`\gamma_{\text{init}}` it first doubles :math:`\gamma` from 1
    until infeasible, so it needs no guess of the scale. The returned value is feasible and
    within ``tolerance`` below :math:`\gamma^*`. A zero ``direction`` returns 0.
    """
    tolerance = require_positive("tolerance", tolerance)
    check_updates(benign_updates)
    benign = benign_updates.detach().to(device="cpu", dtype=torch.float64)
    direction = direction.detach().to(device="cpu", dtype=torch.float64)
    if direction.shape != benign.shape[1:]:
        raise AttackError(f"direction must have shape ({benign.shape[1]},); got {tuple(direction.shape)}")
    if not bool(direction.any()):
        return 0.0
    mean = benign.mean(dim=0)
    bound = max(_max_distance(benign, point) for point in benign)

    def feasible(gamma: float) -> bool:
        return _max_distance(benign, mean + gamma * direction) <= bound

    low, high = 0.0, 1.0
    while feasible(high):
        if high > 1e300:  # only with non-finite inputs: no finite gamma is infeasible
            raise AttackError("min-max search diverged; benign_updates must be finite")
        low, high = high, 2.0 * high
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        if feasible(middle):
            low = middle
        else:
            high = middle
    return low


def min_max_attack(
    benign_updates: Tensor,
    *,
    num_malicious: int,
    perturbation: str = "unit_vector",
    tolerance: float = 1e-5,
) -> Tensor:
    r"""Min-Max's crafted update :math:`\mu + \gamma^* \nabla^p` [Shejwalkar and Houmansadr, 2021].

    Parameters
    ----------
    benign_updates : Tensor
        Shape ``(num_benign, num_params)``, ``num_benign >= 1``.
    num_malicious : int
        Number of crafted updates (all equal), >= 1.
    perturbation : {"unit_vector", "std", "sign"}
        :math:`\nabla^p`, see :func:`min_max_perturbation`.
    tolerance : float
        Precision of :math:`\gamma^*` (the paper's :math:`\tau = 10^{-5}`).

    Returns
    -------
    Tensor
        Shape ``(num_malicious, num_params)``, dtype and device of ``benign_updates``.
    """
    require_integer("num_malicious", num_malicious, minimum=1)
    direction = min_max_perturbation(benign_updates, perturbation=perturbation)
    gamma = min_max_gamma(benign_updates, direction=direction, tolerance=tolerance)
    mean = benign_updates.detach().to(device="cpu", dtype=torch.float64).mean(dim=0)
    crafted = mean + gamma * direction
    return crafted.expand(num_malicious, -1).to(device=benign_updates.device, dtype=benign_updates.dtype).clone()


class MinMaxAttack(CraftingAttack):
    """AGR-agnostic Min-Max; see :func:`min_max_attack` (over the round's benign rows).

    Parameters
    ----------
    num_malicious : int
        Malicious clients in the federation.
    schedule : Schedule or mapping
        Rounds in which the attack is active.
    perturbation : {"unit_vector", "std", "sign"}
        The perturbation direction.
    tolerance : float
        Precision of the search for :math:`\\gamma`.
    """

    name = "min_max"

    def __init__(
        self,
        *,
        num_malicious: int = 0,
        schedule: Schedule | Mapping[str, object] | None = None,
        perturbation: str = "unit_vector",
        tolerance: float = 1e-5,
    ) -> None:
        super().__init__(num_malicious=num_malicious, schedule=schedule)
        if perturbation not in PERTURBATIONS:
            raise AttackError(f"attack.perturbation must be one of {PERTURBATIONS}; got {perturbation!r}")
        self.perturbation = perturbation
        self.tolerance = require_positive("attack.tolerance", tolerance)

    def craft_all(self, context: CraftContext) -> Tensor:
        return min_max_attack(
            context.benign_rows,
            num_malicious=len(context.malicious_ids),
            perturbation=self.perturbation,
            tolerance=self.tolerance,
        )
