"""Fang et al.'s attacks on Krum and Trimmed mean / Median, and the FedAvg zero-update attack."""

from __future__ import annotations

import math

import pytest
import torch

from fedshield.attacks import (
    AttackError,
    CraftContext,
    KrumAttack,
    TrimAttack,
    ZeroUpdateAttack,
    change_direction,
    krum_attack,
    krum_attack_lambda,
    krum_attack_upper_bound,
    trim_attack,
    zero_update_attack,
)
from fedshield.rules import coordinate_median, fedavg, krum, trimmed_mean
from fedshield.task.determinism import torch_generator


def benign_around_mean(
    *, seed: int, num_benign: int = 10, dimension: int = 50, mean_size: float = 0.5, noise: float = 1.0
) -> torch.Tensor:
    """Honest updates: a common mean (entries +-mean_size) plus independent Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    mean = mean_size * torch.sign(torch.randn(dimension, generator=generator))
    return mean + noise * torch.randn(num_benign, dimension, generator=generator)


def make_context(
    updates: torch.Tensor,
    *,
    sampled_ids: tuple[int, ...],
    malicious_ids: tuple[int, ...],
    own_id: int,
    weights: torch.Tensor | None = None,
    seed: int = 7,
) -> CraftContext:
    return CraftContext(
        server_round=3,
        own_id=own_id,
        malicious_ids=malicious_ids,
        sampled_ids=sampled_ids,
        updates=updates,
        weights=torch.ones(len(sampled_ids)) if weights is None else weights,
        global_params=torch.zeros(updates.shape[1]),
        generator=torch_generator(seed),
    )


def crafted_by_each_colluder(attack, updates, *, sampled_ids, malicious_ids, weights=None):
    """Every colluder crafts from its own (identically seeded) context; stack their replies."""
    return torch.stack(
        [
            attack.craft(
                make_context(updates, sampled_ids=sampled_ids, malicious_ids=malicious_ids, own_id=uid, weights=weights)
            )
            for uid in malicious_ids
        ]
    )


# ------------------------------------------------------------------------- zero-update attack


def test_zero_update_makes_weighted_fedavg_zero():
    # Prepare
    generator = torch.Generator().manual_seed(0)
    benign = torch.randn(7, 40, generator=generator) + 3.0
    benign_weights = torch.tensor([10.0, 25.0, 3.0, 8.0, 60.0, 1.0, 12.0])
    malicious_weights = torch.tensor([5.0, 17.0, 9.0])
    # Execute
    crafted = zero_update_attack(benign, benign_weights=benign_weights, malicious_weights=malicious_weights)
    aggregate = fedavg(torch.cat([benign, crafted]), weights=torch.cat([benign_weights, malicious_weights]))
    # Assert
    assert crafted.shape == (3, 40)
    torch.testing.assert_close(aggregate, torch.zeros(40), atol=1e-5, rtol=0)
    assert fedavg(benign, weights=benign_weights).abs().max() > 1.0  # the attack did something


def test_zero_update_class_uses_context_weights():
    updates = benign_around_mean(seed=1, num_benign=6, dimension=20)
    sampled_ids, malicious_ids = (2, 4, 9, 13, 21, 30), (4, 21)
    weights = torch.tensor([5.0, 7.0, 11.0, 2.0, 3.0, 40.0])
    crafted = crafted_by_each_colluder(
        ZeroUpdateAttack(num_malicious=2),
        updates,
        sampled_ids=sampled_ids,
        malicious_ids=malicious_ids,
        weights=weights,
    )
    sent = updates.clone()
    sent[[sampled_ids.index(uid) for uid in malicious_ids]] = crafted
    torch.testing.assert_close(fedavg(sent, weights=weights), torch.zeros(20), atol=1e-5, rtol=0)


def test_zero_update_rejects_zero_malicious_weight():
    with pytest.raises(AttackError, match="malicious_weights"):
        zero_update_attack(torch.ones(2, 3), benign_weights=torch.ones(2), malicious_weights=torch.zeros(2))


# ----------------------------------------------------------------------------- Krum attack


@pytest.mark.parametrize("seed", range(5))
def test_krum_selects_a_crafted_update_pointing_against_the_benign_mean(seed):
    # Prepare: 10 benign and 3 malicious clients, d = 50, rows in a shuffled order.
    benign = benign_around_mean(seed=seed)
    crafted = krum_attack(benign, num_malicious=3, generator=torch.Generator().manual_seed(seed))
    updates = torch.cat([benign, crafted])
    order = torch.randperm(13, generator=torch.Generator().manual_seed(100 + seed))
    # Execute
    selected = krum(updates[order], num_malicious=3)
    # Assert
    assert any(torch.equal(selected, row) for row in crafted)
    assert float(selected @ benign.mean(dim=0)) < 0


def test_krum_attack_shape_lambda_bound_and_perturbation():
    benign = benign_around_mean(seed=11)
    bound = krum_attack_upper_bound(benign, num_malicious=3)
    scale = krum_attack_lambda(benign, num_malicious=3)
    crafted = krum_attack(benign, num_malicious=3, perturbation_radius=1e-3, generator=torch.Generator().manual_seed(0))
    assert crafted.shape == (3, 50) and crafted.dtype == benign.dtype
    # lambda is the bound halved k >= 0 times, and the first row is -lambda * s.
    halvings = math.log2(bound / scale)
    assert halvings == pytest.approx(round(halvings), abs=1e-9) and round(halvings) >= 0
    torch.testing.assert_close(crafted[0], -scale * torch.sign(benign.mean(dim=0)))
    # The other c - 1 rows are distinct points within the perturbation radius.
    distances = (crafted[1:] - crafted[0]).norm(dim=1)
    assert bool((distances <= 1e-3 + 1e-6).all()) and bool((distances > 0).all())


def test_krum_upper_bound_matches_equation_3_by_hand():
    # c = 1 malicious, m = 5 clients, d = 4; the 4 benign updates are 0, 1, 2, 4 times e1.
    benign = torch.zeros(4, 4)
    benign[:, 0] = torch.tensor([0.0, 1.0, 2.0, 4.0])
    # m - c - 2 = 2 nearest benign neighbours: 0 -> {1, 2}: 3; 1 -> {0, 1}: 2; 2 -> {1, 2}: 3;
    # 4 -> {2, 3}: 5. min = 2; m - 2c - 1 = 2; sqrt(d) = 2; max norm = 4.
    expected = 2 / (2 * 2) + 4 / 2
    assert krum_attack_upper_bound(benign, num_malicious=1) == pytest.approx(expected)


@pytest.mark.parametrize(("seed", "num_malicious", "noise"), [(0, 1, 1.0), (1, 2, 1.0), (2, 3, 1.0), (3, 1, 0.3)])
def test_krum_attack_lambda_is_the_first_halving_that_the_servers_krum_selects(seed, num_malicious, noise):
    # In float64 the attacker's simulation and the server's Krum see the same numbers: every
    # lambda of the halving before the returned one loses the server's Krum, the returned one
    # wins it (or, below min_lambda, the search failed).
    benign = benign_around_mean(seed=seed, noise=noise).to(torch.float64)
    direction = change_direction(benign)

    def krum_selects_crafted(value: float) -> bool:
        crafted = (-value * direction).expand(num_malicious, -1)
        selected = krum(torch.cat([crafted, benign]), num_malicious=num_malicious)
        return torch.equal(selected, crafted[0])

    scale = krum_attack_lambda(benign, num_malicious=num_malicious, min_lambda=1e-5)
    candidate = krum_attack_upper_bound(benign, num_malicious=num_malicious)
    while candidate > scale:
        assert not krum_selects_crafted(candidate)
        candidate /= 2
    assert candidate == scale
    assert krum_selects_crafted(scale) == (scale >= 1e-5)


def test_krum_attack_raises_below_krums_budget():
    with pytest.raises(AttackError, match="2 \\* num_malicious \\+ 3"):
        krum_attack(torch.randn(5, 10), num_malicious=3)


def test_krum_attack_class_colluders_agree_and_win_krum():
    # Prepare: 13 sampled clients, 3 of them malicious; direction from all 13 honest rows.
    updates = benign_around_mean(seed=3, num_benign=13)
    sampled_ids = tuple(range(100, 113))
    malicious_ids = (101, 106, 112)
    attack = KrumAttack(num_malicious=5)
    # Execute
    crafted = crafted_by_each_colluder(attack, updates, sampled_ids=sampled_ids, malicious_ids=malicious_ids)
    sent = updates.clone()
    sent[[sampled_ids.index(uid) for uid in malicious_ids]] = crafted
    # Assert
    context = make_context(updates, sampled_ids=sampled_ids, malicious_ids=malicious_ids, own_id=101)
    torch.testing.assert_close(crafted, attack.craft_all(context), rtol=0, atol=0)
    selected = krum(sent, num_malicious=3)
    assert any(torch.equal(selected, row) for row in crafted)
    assert float(selected @ context.benign_rows.mean(dim=0)) < 0


# ----------------------------------------------------------------------------- Trim attack


def test_trim_attack_values_lie_beyond_benign_extremes_within_factor_b():
    benign = benign_around_mean(seed=5, num_benign=12, dimension=200)
    crafted = trim_attack(benign, num_malicious=4, generator=torch.Generator().manual_seed(0))
    direction = change_direction(benign)
    largest, smallest = benign.max(dim=0).values, benign.min(dim=0).values
    decreasing = direction < 0
    # s_j = -1: crafted in [w_max, 2 w_max] (w_max > 0) or [w_max / 2, w_max] (w_max <= 0).
    above = crafted[:, decreasing]
    edge = largest[decreasing]
    assert bool((above >= edge - 1e-6).all())
    assert bool((above <= torch.where(edge > 0, 2 * edge, edge / 2) + 1e-6).all())
    # s_j = +1: crafted in [w_min / 2, w_min] (w_min > 0) or [2 w_min, w_min] (w_min <= 0).
    below = crafted[:, ~decreasing]
    edge = smallest[~decreasing]
    assert bool((below <= edge + 1e-6).all())
    assert bool((below >= torch.where(edge > 0, edge / 2, 2 * edge) - 1e-6).all())
    # Independent draws for each crafted update.
    assert not torch.equal(crafted[0], crafted[1])


@pytest.mark.parametrize(
    "rule",
    [lambda updates: trimmed_mean(updates, num_trimmed=3), coordinate_median],
    ids=["trimmed_mean", "median"],
)
def test_trim_attack_moves_the_aggregate_against_the_benign_direction(rule):
    # Prepare: 10 benign + 3 malicious clients.
    benign = benign_around_mean(seed=8, num_benign=10, dimension=300)
    crafted = trim_attack(benign, num_malicious=3, generator=torch.Generator().manual_seed(1))
    # Execute
    shift = rule(torch.cat([benign, crafted])) - rule(benign)
    # Assert: on most coordinates the shift has the sign opposite to s.
    opposite = (torch.sign(shift) == -change_direction(benign)).float().mean()
    assert opposite > 0.9


def test_trim_attack_class_uses_benign_extremes_and_all_rows_for_direction():
    updates = benign_around_mean(seed=4, num_benign=9, dimension=30)
    updates[2] = 50.0  # a malicious client's honest row: an extreme that must not be used
    sampled_ids, malicious_ids = tuple(range(9)), (2, 5)
    crafted = crafted_by_each_colluder(
        TrimAttack(num_malicious=2), updates, sampled_ids=sampled_ids, malicious_ids=malicious_ids
    )
    context = make_context(updates, sampled_ids=sampled_ids, malicious_ids=malicious_ids, own_id=2)
    expected = trim_attack(
        context.benign_rows, num_malicious=2, generator=torch_generator(7), direction_updates=updates
    )
    torch.testing.assert_close(crafted, expected, rtol=0, atol=0)
    assert bool((crafted.abs() <= 2 * context.benign_rows.abs().max() + 1e-6).all())


def test_trim_attack_rejects_bound_factor_at_most_one():
    with pytest.raises(AttackError, match="bound_factor"):
        TrimAttack(num_malicious=1, bound_factor=1.0)
