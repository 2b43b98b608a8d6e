"""LIE, IPM, Min-Max, sign flipping and Gaussian noise: the formulas' checkable properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from fedshield.attacks import (
    AttackError,
    CraftContext,
    GaussianAttack,
    IPMAttack,
    LIEAttack,
    MinMaxAttack,
    SignFlipAttack,
    gaussian_attack,
    ipm_attack,
    lie_attack,
    lie_z,
    min_max_attack,
    min_max_gamma,
    min_max_perturbation,
)
from fedshield.rules import fedavg
from fedshield.task.determinism import torch_generator


def random_updates(seed: int, rows: int = 8, dimension: int = 30, shift: float = 0.5):
    generator = torch.Generator().manual_seed(seed)
    return shift + torch.randn(rows, dimension, generator=generator, dtype=torch.float64)


def context_for(updates, *, malicious_ids, own_id, seed=3):
    sampled_ids = tuple(range(len(updates)))
    return CraftContext(
        server_round=1,
        own_id=own_id,
        malicious_ids=malicious_ids,
        sampled_ids=sampled_ids,
        updates=updates,
        weights=torch.ones(len(updates)),
        global_params=torch.zeros(updates.shape[1]),
        generator=torch_generator(seed),
    )


# ------------------------------------------------------------------------------------- LIE


@pytest.mark.parametrize(("num_clients", "num_malicious"), [(50, 12), (50, 5), (10, 2), (3, 1)])
def test_lie_z_is_the_normal_quantile_of_the_papers_formula(num_clients, num_malicious):
    supporters = math.floor(num_clients / 2 + 1) - num_malicious
    expected = norm.ppf((num_clients - supporters) / num_clients)
    assert lie_z(num_clients=num_clients, num_malicious=num_malicious) == pytest.approx(expected)


def test_lie_z_hand_value_for_fifty_clients_twelve_malicious():
    # s = floor(26) - 12 = 14, (50 - 14) / 50 = 0.72, Phi^-1(0.72) = 0.5828.
    assert lie_z(num_clients=50, num_malicious=12) == pytest.approx(0.582842, abs=1e-6)


def test_lie_z_rejects_a_malicious_majority():
    with pytest.raises(AttackError, match="num_malicious < floor"):
        lie_z(num_clients=10, num_malicious=6)


def test_lie_attack_is_mean_minus_z_std_within_benign_range():
    benign = torch.tensor([[0.0, 10.0], [2.0, 10.0], [4.0, 10.0]])
    # mean (2, 10), population std (sqrt(8/3), 0); z given explicitly.
    crafted = lie_attack(benign, num_malicious=2, z=0.5)
    expected = torch.tensor([2.0 - 0.5 * math.sqrt(8 / 3), 10.0])
    torch.testing.assert_close(crafted, expected.expand(2, 2))
    # With the paper's z (n = 5, m = 2: s = 1, Phi^-1(0.8) = 0.84) every coordinate stays
    # inside the benign range.
    crafted = lie_attack(benign, num_malicious=2)
    assert bool((crafted >= benign.min(dim=0).values).all())


def test_lie_class_uses_round_counts():
    updates = random_updates(0, rows=10)
    context = context_for(updates, malicious_ids=(1, 4), own_id=4)
    crafted = LIEAttack(num_malicious=3).craft(context)
    expected = lie_attack(context.benign_rows, num_malicious=2, num_clients=10)[0]
    torch.testing.assert_close(crafted, expected)


# ------------------------------------------------------------------------------------- IPM


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 4.0])
def test_ipm_inner_product_with_benign_mean_is_negative(epsilon):
    benign = random_updates(1)
    crafted = ipm_attack(benign, num_malicious=3, epsilon=epsilon)
    mean = benign.mean(dim=0)
    torch.testing.assert_close(crafted, (-epsilon * mean).expand(3, -1))
    assert bool((crafted @ mean < 0).all())


def test_ipm_turns_fedavg_negative_once_epsilon_exceeds_benign_over_malicious():
    benign = random_updates(2, rows=6)
    mean = benign.mean(dim=0)
    for epsilon, sign in [(1.5, 1.0), (2.5, -1.0)]:  # (n - q) / q = 6 / 3 = 2
        crafted = ipm_attack(benign, num_malicious=3, epsilon=epsilon)
        aggregate = fedavg(torch.cat([benign, crafted]), weights=torch.ones(9))
        assert math.copysign(1.0, float(aggregate @ mean)) == sign


def test_ipm_class_rejects_non_positive_epsilon():
    with pytest.raises(AttackError, match="attack.epsilon"):
        IPMAttack(num_malicious=1, epsilon=0.0)


# --------------------------------------------------------------------------------- Min-Max


def closed_form_gamma(benign: torch.Tensor, direction: torch.Tensor) -> float:
    """max gamma with ||mean + gamma p - x_i|| <= max_jk ||x_j - x_k|| for all i (quadratics)."""
    mean = benign.mean(dim=0)
    bound = torch.cdist(benign, benign).max()
    offsets = mean - benign
    a = direction @ direction
    b = 2 * offsets @ direction
    c = (offsets * offsets).sum(dim=1) - bound**2
    return float(((-b + torch.sqrt(b * b - 4 * a * c)) / (2 * a)).min())


@pytest.mark.parametrize("perturbation", ["unit_vector", "std", "sign"])
def test_min_max_respects_the_distance_constraint_and_is_maximal(perturbation):
    benign = random_updates(4, rows=9, dimension=25)
    crafted = min_max_attack(benign, num_malicious=2, perturbation=perturbation)
    bound = torch.cdist(benign, benign).max()
    assert float(torch.cdist(crafted[:1], benign).max()) <= float(bound) + 1e-9
    direction = min_max_perturbation(benign, perturbation=perturbation)
    gamma = min_max_gamma(benign, direction=direction)
    assert gamma == pytest.approx(closed_form_gamma(benign, direction), abs=2e-5)
    torch.testing.assert_close(crafted[1], benign.mean(dim=0) + gamma * direction)
    assert gamma > 0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(2, 12), shift=st.floats(-3.0, 3.0))
def test_min_max_constraint_holds_for_random_updates(seed, rows, shift):
    benign = random_updates(seed, rows=rows, dimension=7, shift=shift)
    crafted = min_max_attack(benign, num_malicious=1)
    bound = float(torch.cdist(benign, benign).max())
    assert float(torch.cdist(crafted, benign).max()) <= bound + 1e-9


def test_min_max_unit_vector_points_against_the_mean():
    benign = random_updates(5)
    direction = min_max_perturbation(benign, perturbation="unit_vector")
    mean = benign.mean(dim=0)
    torch.testing.assert_close(direction, -mean / mean.norm())
    with pytest.raises(AttackError, match="attack.perturbation"):
        MinMaxAttack(num_malicious=1, perturbation="inverse")


# ----------------------------------------------------------------------- sign flip, Gaussian


def test_sign_flip_post_process_only_in_active_rounds():
    attack = SignFlipAttack(num_malicious=1, scale=3.0, schedule={"start_round": 2})
    update = torch.tensor([1.0, -2.0, 0.5])
    torch.testing.assert_close(attack.post_process(update, server_round=1, num_sampled=5), update)
    torch.testing.assert_close(
        attack.post_process(update, server_round=2, num_sampled=5), torch.tensor([-3.0, 6.0, -1.5])
    )


def test_gaussian_noise_has_the_requested_scale_and_independent_rows():
    noise = gaussian_attack(num_malicious=3, num_params=20_000, sigma=5.0, generator=torch_generator(0))
    assert noise.shape == (3, 20_000) and noise.dtype == torch.float32
    assert float(noise.std()) == pytest.approx(5.0, rel=0.02)
    assert abs(float(noise.mean())) < 0.1
    assert not torch.equal(noise[0], noise[1])


def test_gaussian_class_colluders_send_distinct_rows_of_one_shared_draw():
    updates = torch.zeros(6, 100)
    rows = [
        GaussianAttack(num_malicious=2, sigma=1.0).craft(context_for(updates, malicious_ids=(1, 3), own_id=uid))
        for uid in (1, 3)
    ]
    shared = gaussian_attack(num_malicious=2, num_params=100, sigma=1.0, generator=torch_generator(3))
    torch.testing.assert_close(torch.stack(rows), shared, rtol=0, atol=0)
    assert not torch.equal(rows[0], rows[1])
