r"""Full-knowledge local model poisoning [Fang et al., 2020] and the FedAvg zero-update attack.

Fang et al. craft the compromised clients' local models so that a Byzantine-robust rule moves
the global model *against* the direction in which it would have changed without the attack.
The paper works with local models :math:`w_i`; we work with updates :math:`u_i = w_i - w_{Re}`
(:math:`w_{Re}` the global model the clients received), which changes nothing: Krum's
distances are translation invariant, and the crafted model :math:`w_{Re} - \lambda s` is the
update :math:`-\lambda s`.

Knowledge (full knowledge, the paper's Section 3.1): the attacker knows the before-attack
updates of every sampled client, honest ones *and* the compromised clients' own honest ones.

* The estimated change direction :math:`s` (the sign of the change "under no attack") is taken
  from all before-attack updates, ``direction_updates`` (the classes pass
  ``context.updates``); as in the authors' code, it is the sign of their mean.
* The quantities the paper defines over the benign clients (Krum's bound in Eq. (3), the
  per-coordinate extremes :math:`w_{\max,j}, w_{\min,j}` of the Trim attack) use
  ``benign_updates`` (``context.benign_rows``).

Fang, Cao, Jia, Gong. "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning."
USENIX Security 2020. https://arxiv.org/abs/1911.11815

The zero-update attack on FedAvg is the untargeted attack of FLCert's evaluation: the
compromised clients cancel the weighted sum of the benign updates, so the global model stops.

Cao, Jia, Gong. "FLCert: Provably Secure Federated Learning against Poisoning Attacks."
IEEE TIFS 2022. https://arxiv.org/abs/2210.00584
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from fedshield.attacks._validation import check_updates, require_integer, require_positive
from fedshield.attacks.base import AttackError, CraftContext, CraftingAttack, Schedule
from fedshield.rules.krum import krum_scores, pairwise_squared_distances, squared_distances_to

# ---------------------------------------------------------------------------------------------
# Shared pieces


def change_direction(updates: Tensor) -> Tensor:
    r"""Estimated change direction :math:`s = \operatorname{sign}(\frac1n \sum_i u_i)`.

    Fang et al. (Section 3.1) call :math:`s_j = 1` an increase of the :math:`j`-th global
    parameter under no attack and :math:`s_j = -1` a decrease; with the mean as the no-attack
    aggregate, :math:`s` is the sign of the mean update (0 where the mean is exactly 0).

    Parameters
    ----------
    updates : Tensor
        Before-attack updates, shape ``(num_clients, num_params)``.

    Returns
    -------
    Tensor
        Shape ``(num_params,)``, dtype of ``updates``, entries in {-1, 0, 1}.
    """
    check_updates(updates, name="direction_updates")
    return torch.sign(updates.to(torch.float64).mean(dim=0)).to(updates.dtype)


# ---------------------------------------------------------------------------------------------
# Attack on Krum (Section 3.3)


def _check_krum_budget(num_benign: int, num_malicious: int) -> None:
    # Krum's precondition n >= 2c + 3 with n = num_benign + c; it also makes the denominator
    # m - 2c - 1 of Eq. (3) positive and leaves m - c - 2 >= 1 benign neighbours.
    if num_benign < num_malicious + 3:
        raise AttackError(
            "the Krum attack needs num_clients >= 2 * num_malicious + 3, i.e. "
            f"num_benign >= num_malicious + 3 = {num_malicious + 3}; got num_benign={num_benign} "
            f"(num_malicious={num_malicious})"
        )


def krum_attack_upper_bound(benign_updates: Tensor, *, num_malicious: int) -> float:
    r"""Upper bound on :math:`\lambda` for the attack on Krum [Fang et al., 2020, Eq. (3)].

    .. math::

        \lambda \le \frac{1}{(m - 2c - 1)\sqrt{d}} \min_{c < i \le m}
            \sum_{l \in \tilde\Gamma^{m-c-2}_{w_i}} D(w_l, w_i)
            + \frac{1}{\sqrt{d}} \max_{c < i \le m} D(w_i, w_{Re}),

    where :math:`m` is the number of clients, :math:`c` = ``num_malicious``, :math:`d` the
    number of parameters, :math:`D` the Euclidean distance, :math:`\tilde\Gamma^{m-c-2}_{w_i}`
    the :math:`m - c - 2` benign models closest to :math:`w_i` (other than itself) and
    :math:`D(w_i, w_{Re}) = \|u_i\|_2` for updates.

    Parameters
    ----------
    benign_updates : Tensor
        The :math:`m - c` benign updates, shape ``(num_benign, num_params)``.
    num_malicious : int
        :math:`c \ge 1`.

    Raises
    ------
    AttackError
        If ``num_benign < num_malicious + 3`` (Krum's ``n >= 2c + 3``).
    """
    require_integer("num_malicious", num_malicious, minimum=1)
    num_benign = check_updates(benign_updates)
    _check_krum_budget(num_benign, num_malicious)
    num_clients = num_benign + num_malicious
    root_dimension = math.sqrt(benign_updates.shape[1])
    points = benign_updates.detach().to(device="cpu", dtype=torch.float64)
    # Krum's neighbour sum over Euclidean (not squared) distances: the sum in Eq. (3).
    distances = pairwise_squared_distances(points).sqrt()
    neighbour_sums = krum_scores(distances, num_neighbours=num_clients - num_malicious - 2)
    spread = neighbour_sums.min() / ((num_clients - 2 * num_malicious - 1) * root_dimension)
    farthest = points.norm(dim=1).max() / root_dimension
    return float(spread + farthest)


def _krum_selects_first_block(
    crafted: Tensor, benign_squared_distances: Tensor, benign: Tensor, *, num_malicious: int
) -> bool:
    """Does Krum (f = c) on [c copies of ``crafted``; benign] select one of the copies?

    The server's Krum (:func:`fedshield.rules.krum.krum`): :func:`krum_scores` of the
    squared distances, lowest score selected, ties to the lowest index, i.e. to a crafted copy.
    Only the crafted column is new in each step of the search; the benign block,
    ``benign_squared_distances``, is :func:`pairwise_squared_distances` of ``benign``.
    """
    num_benign = benign.shape[0]
    size = num_malicious + num_benign
    distances = torch.zeros((size, size), dtype=torch.float64)
    # The crafted column of pairwise_squared_distances([copies; benign]), the same sums of
    # squared differences, without recomputing the benign block in every halving step; the
    # copies are at distance 0 from each other.
    to_benign = squared_distances_to(benign, crafted)
    distances[:num_malicious, num_malicious:] = to_benign
    distances[num_malicious:, :num_malicious] = to_benign[:, None]
    distances[num_malicious:, num_malicious:] = benign_squared_distances
    scores = krum_scores(distances, num_neighbours=size - num_malicious - 2)
    return int(torch.argmin(scores)) < num_malicious


def _ball_samples(center: Tensor, *, count: int, radius: float, generator: torch.Generator) -> Tensor:
    """``count`` points drawn uniformly from the closed Euclidean ball around ``center``."""
    dimension = center.shape[0]
    directions = torch.randn((count, dimension), generator=generator, dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    radii = radius * torch.rand((count, 1), generator=generator, dtype=torch.float64) ** (1.0 / dimension)
    return center.to(torch.float64) + radii * directions


def krum_attack_lambda(
    benign_updates: Tensor,
    *,
    num_malicious: int,
    direction_updates: Tensor | None = None,
    min_lambda: float = 1e-5,
) -> float:
    r"""The :math:`\lambda` of the attack on Krum [Fang et al., 2020, Section 3.3].

    Starts at :func:`krum_attack_upper_bound` and halves :math:`\lambda` until Krum with
    :math:`f = c`, run on :math:`c` copies of :math:`-\lambda s` and the benign updates,
    selects a crafted copy, or :math:`\lambda` falls below ``min_lambda`` (the paper's
    :math:`\epsilon = 10^{-5}`). If no :math:`\lambda \ge` ``min_lambda`` succeeds, the last
    halved value (below ``min_lambda``) is returned, where the paper's search stops.

    Parameters
    ----------
    benign_updates : Tensor
        Shape ``(num_benign, num_params)``.
    num_malicious : int
        :math:`c \ge 1`, the number of crafted updates Krum will receive.
    direction_updates : Tensor or None
        Updates whose mean's sign is :math:`s` (:func:`change_direction`); default
        ``benign_updates``.
    min_lambda : float
        :math:`\epsilon > 0`.
    """
    upper = krum_attack_upper_bound(benign_updates, num_malicious=num_malicious)
    min_lambda = require_positive("min_lambda", min_lambda)
    direction = change_direction(benign_updates if direction_updates is None else direction_updates).to(
        device="cpu", dtype=torch.float64
    )
    if direction.shape[0] != benign_updates.shape[1]:
        raise AttackError(f"direction_updates must have {benign_updates.shape[1]} columns; got {direction.shape[0]}")
    benign = benign_updates.detach().to(device="cpu", dtype=torch.float64)
    benign_squared_distances = pairwise_squared_distances(benign)
    scale = upper
    while scale >= min_lambda:
        if _krum_selects_first_block(-scale * direction, benign_squared_distances, benign, num_malicious=num_malicious):
            return scale
        scale /= 2
    return scale


def krum_attack(
    benign_updates: Tensor,
    *,
    num_malicious: int,
    direction_updates: Tensor | None = None,
    min_lambda: float = 1e-5,
    perturbation_radius: float = 1e-5,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Full-knowledge attack on Krum [Fang et al., 2020, Section 3.3].

    The first crafted update is :math:`u'_1 = -\lambda s` (the model
    :math:`w'_1 = w_{Re} - \lambda s`), with :math:`s` the estimated change direction and
    :math:`\lambda` from :func:`krum_attack_lambda`. As in the paper, the other :math:`c - 1`
    crafted updates are drawn at random within distance ``perturbation_radius`` of
    :math:`u'_1` (uniformly from that ball, using ``generator``), so that Krum's score of
    :math:`u'_1` stays minimal; without a generator they are exact copies.

    Parameters
    ----------
    benign_updates : Tensor
        Shape ``(num_benign, num_params)``; requires ``num_benign >= num_malicious + 3``.
    num_malicious : int
        :math:`c \ge 1`, the number of crafted updates (and Krum's assumed :math:`f`).
    direction_updates : Tensor or None
        Updates defining :math:`s` (all before-attack updates under full knowledge); default
        ``benign_updates``.
    min_lambda : float
        :math:`\epsilon`: the search for :math:`\lambda` stops below it.
    perturbation_radius : float
        Radius (>= 0) of the ball around :math:`u'_1` the other crafted updates come from.
    generator : torch.Generator or None
        Source of the perturbations (CPU generator).

    Returns
    -------
    Tensor
        Shape ``(num_malicious, num_params)``, dtype and device of ``benign_updates``.

    Raises
    ------
    AttackError
        If ``num_benign < num_malicious + 3`` or a parameter is out of range.
    """
    radius = require_positive("perturbation_radius", perturbation_radius, allow_zero=True)
    scale = krum_attack_lambda(
        benign_updates,
        num_malicious=num_malicious,
        direction_updates=direction_updates,
        min_lambda=min_lambda,
    )
    direction = change_direction(benign_updates if direction_updates is None else direction_updates).to(
        device="cpu", dtype=torch.float64
    )
    first = -scale * direction
    crafted = first.expand(num_malicious, -1).clone()
    if generator is not None and num_malicious > 1 and radius > 0:
        crafted[1:] = _ball_samples(first, count=num_malicious - 1, radius=radius, generator=generator)
    return crafted.to(device=benign_updates.device, dtype=benign_updates.dtype)


# ---------------------------------------------------------------------------------------------
# Attack on Trimmed mean and Median (Section 3.4)


def trim_attack(
    benign_updates: Tensor,
    *,
    num_malicious: int,
    generator: torch.Generator,
    direction_updates: Tensor | None = None,
    bound_factor: float = 2.0,
) -> Tensor:
    r"""Full-knowledge attack on Trimmed mean and Median [Fang et al., 2020, Section 3.4].

    For each coordinate :math:`j`, with :math:`w_{\max,j}, w_{\min,j}` the largest and smallest
    benign values and :math:`s_j` the estimated change direction, every crafted value is drawn
    uniformly from

    * :math:`s_j = -1`: :math:`[w_{\max,j}, b\,w_{\max,j}]` if :math:`w_{\max,j} > 0`, else
      :math:`[w_{\max,j}/b, w_{\max,j}]` (values :math:`\ge w_{\max,j}`);
    * :math:`s_j = 1` (and the tie :math:`s_j = 0`): :math:`[w_{\min,j}/b, w_{\min,j}]` if
      :math:`w_{\min,j} > 0`, else :math:`[b\,w_{\min,j}, w_{\min,j}]` (values
      :math:`\le w_{\min,j}`),

    with :math:`b` = ``bound_factor`` (the paper uses :math:`b = 2`). Every crafted value thus
    lies beyond all benign values on the side opposite to :math:`s_j`, at most a factor
    :math:`b` away, and is drawn independently for each crafted update.

    Parameters
    ----------
    benign_updates : Tensor
        Shape ``(num_benign, num_params)``, ``num_benign >= 1``.
    num_malicious : int
        Number of crafted updates, :math:`c \ge 1`.
    generator : torch.Generator
        CPU generator of the uniform draws.
    direction_updates : Tensor or None
        Updates defining :math:`s` (all before-attack updates under full knowledge); default
        ``benign_updates``.
    bound_factor : float
        :math:`b > 1`.

    Returns
    -------
    Tensor
        Shape ``(num_malicious, num_params)``, dtype and device of ``benign_updates``.
    """
    require_integer("num_malicious", num_malicious, minimum=1)
    check_updates(benign_updates)
    factor = require_positive("bound_factor", bound_factor)
    if factor <= 1:
        raise AttackError(f"bound_factor must be > 1; got bound_factor={bound_factor!r}")
    benign = benign_updates.detach().to(device="cpu", dtype=torch.float64)
    direction = change_direction(benign_updates if direction_updates is None else direction_updates).to(
        device="cpu", dtype=torch.float64
    )
    if direction.shape[0] != benign.shape[1]:
        raise AttackError(f"direction_updates must have {benign.shape[1]} columns; got {direction.shape[0]}")
    decreasing = direction < 0
    edge = torch.where(decreasing, benign.max(dim=0).values, benign.min(dim=0).values)
    # Moving away from the benign values means multiplying by b on the side whose sign the
    # edge has ("above a positive maximum", "below a negative minimum"), else dividing by b.
    other = torch.where(decreasing == (edge > 0), factor * edge, edge / factor)
    low, high = torch.minimum(edge, other), torch.maximum(edge, other)
    uniform = torch.rand((num_malicious, benign.shape[1]), generator=generator, dtype=torch.float64)
    crafted = low + (high - low) * uniform
    return crafted.to(device=benign_updates.device, dtype=benign_updates.dtype)


# ---------------------------------------------------------------------------------------------
# Zero-update attack on FedAvg (FLCert's evaluation)


def _check_weights(name: str, weights: Tensor, *, length: int) -> Tensor:
    weights = torch.as_tensor(weights).to(torch.float64)
    if weights.shape != (length,):
        raise AttackError(f"{name} must have shape ({length},); got {tuple(weights.shape)}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise AttackError(f"{name} must be finite and >= 0; got {weights.tolist()}")
    return weights


def zero_update_attack(benign_updates: Tensor, *, benign_weights: Tensor, malicious_weights: Tensor) -> Tensor:
    r"""Crafted updates that make FedAvg's weighted mean exactly zero.

    With benign updates :math:`u_b`, weights :math:`w_b` and malicious weights :math:`w_m`,
    every malicious client sends

    .. math:: u' = -\frac{\sum_b w_b u_b}{\sum_m w_m},

    so that :math:`\sum_b w_b u_b + \sum_m w_m u' = 0` and the global model does not move.

    Parameters
    ----------
    benign_updates : Tensor
        Shape ``(num_benign, num_params)`` (``num_benign`` may be 0).
    benign_weights : Tensor
        Sample counts of the benign clients, shape ``(num_benign,)``.
    malicious_weights : Tensor
        Sample counts of the malicious clients, shape ``(num_malicious,)``, positive sum.

    Returns
    -------
    Tensor
        Shape ``(num_malicious, num_params)``, dtype and device of ``benign_updates``; the sum
        is accumulated in float64.
    """
    num_benign = check_updates(benign_updates, minimum_rows=0)
    benign_weights = _check_weights("benign_weights", benign_weights, length=num_benign)
    malicious_weights = torch.as_tensor(malicious_weights)
    if malicious_weights.ndim != 1 or len(malicious_weights) < 1:
        raise AttackError(
            "malicious_weights must have shape (num_malicious,) with num_malicious >= 1; "
            f"got {tuple(malicious_weights.shape)}"
        )
    malicious_weights = _check_weights("malicious_weights", malicious_weights, length=len(malicious_weights))
    malicious_total = malicious_weights.sum()
    if not malicious_total > 0:
        raise AttackError(f"malicious_weights must sum to > 0; got sum={float(malicious_total)}")
    benign = benign_updates.to(torch.float64)
    weighted_sum = (benign * benign_weights.to(benign.device)[:, None]).sum(dim=0)
    crafted = -weighted_sum / malicious_total.to(benign.device)
    return crafted.expand(len(malicious_weights), -1).to(benign_updates.dtype).clone()


# ---------------------------------------------------------------------------------------------
# The Attack classes


class KrumAttack(CraftingAttack):
    """Fang et al.'s full-knowledge attack on Krum; see :func:`krum_attack`.

    In each round the colluders use :math:`c` = the number of malicious clients sampled,
    the benign rows of the round for Eq. (3) and Krum's check, and all before-attack rows
    (``context.updates``) for the direction :math:`s`.

    Parameters
    ----------
    num_malicious : int
        Malicious clients in the federation.
    schedule : Schedule or mapping
        Rounds in which the attack is active.
    min_lambda : float
        :math:`\\epsilon` of the search for :math:`\\lambda` (paper: 1e-5).
    perturbation_radius : float
        Distance within which the other :math:`c - 1` crafted updates are drawn.
    """

    name = "krum"

    def __init__(
        self,
        *,
        num_malicious: int = 0,
        schedule: Schedule | Mapping[str, object] | None = None,
        min_lambda: float = 1e-5,
        perturbation_radius: float = 1e-5,
    ) -> None:
        super().__init__(num_malicious=num_malicious, schedule=schedule)
        self.min_lambda = require_positive("attack.min_lambda", min_lambda)
        self.perturbation_radius = require_positive("attack.perturbation_radius", perturbation_radius, allow_zero=True)

    def check_precondition(self, *, num_sampled: int, num_attackers: int) -> None:
        """Krum's ``n >= 2c + 3`` for a round of ``n`` = ``num_sampled`` with ``c`` = ``num_attackers``."""
        if num_attackers > 0:
            _check_krum_budget(num_sampled - num_attackers, num_attackers)

    def craft_all(self, context: CraftContext) -> Tensor:
        return krum_attack(
            context.benign_rows,
            num_malicious=len(context.malicious_ids),
            direction_updates=context.updates,
            min_lambda=self.min_lambda,
            perturbation_radius=self.perturbation_radius,
            generator=context.generator,
        )


class TrimAttack(CraftingAttack):
    """Fang et al.'s full-knowledge attack on Trimmed mean and Median; see :func:`trim_attack`.

    :math:`w_{\\max}, w_{\\min}` come from the round's benign rows, :math:`s` from all
    before-attack rows (``context.updates``).

    Parameters
    ----------
    num_malicious : int
        Malicious clients in the federation.
    schedule : Schedule or mapping
        Rounds in which the attack is active.
    bound_factor : float
        :math:`b > 1` (paper: 2).
    """

    name = "trim"

    def __init__(
        self,
        *,
        num_malicious: int = 0,
        schedule: Schedule | Mapping[str, object] | None = None,
        bound_factor: float = 2.0,
    ) -> None:
        super().__init__(num_malicious=num_malicious, schedule=schedule)
        self.bound_factor = require_positive("attack.bound_factor", bound_factor)
        if self.bound_factor <= 1:
            raise AttackError(f"attack.bound_factor must be > 1; got {bound_factor!r}")

    def craft_all(self, context: CraftContext) -> Tensor:
        return trim_attack(
            context.benign_rows,
            num_malicious=len(context.malicious_ids),
            generator=context.generator,
            direction_updates=context.updates,
            bound_factor=self.bound_factor,
        )


class ZeroUpdateAttack(CraftingAttack):
    """The zero-update attack on FedAvg; see :func:`zero_update_attack`.

    Uses the sample counts ``context.weights`` with which FedAvg weights the round's updates.
    """

    name = "zero_update"

    def craft_all(self, context: CraftContext) -> Tensor:
        return zero_update_attack(
            context.benign_rows,
            benign_weights=context.benign_weights,
            malicious_weights=context.malicious_weights,
        )
