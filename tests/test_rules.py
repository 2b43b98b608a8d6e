"""Tests of the rules in fedshield.rules: hand-checked values, properties and errors."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.rules import (
    RFA,
    AggregationError,
    AggregationRule,
    Bulyan,
    ByzantineBudgetError,
    FedAvg,
    FLTrust,
    FoolsGold,
    Krum,
    Median,
    MultiKrum,
    TrimmedMean,
    bulyan,
    coordinate_median,
    fedavg,
    fltrust,
    foolsgold,
    foolsgold_weights,
    geometric_median,
    krum,
    trimmed_mean,
)
from fedshield.rules.krum import pairwise_squared_distances
from fedshield.rules.trimmed_mean import trimmed_count

# Every rule, configured for 7 clients (f = 1), as factories so stateful rules start fresh.
ALL_RULES = {
    "fedavg": FedAvg,
    "krum": lambda: Krum(num_malicious=1),
    "multi_krum": lambda: MultiKrum(num_malicious=1, num_selected=3),
    "trimmed_mean": lambda: TrimmedMean(num_trimmed=1),
    "trimmed_mean_fraction": lambda: TrimmedMean(trim_fraction=0.2),
    "median": Median,
    "bulyan": lambda: Bulyan(num_malicious=1),
    "rfa": RFA,
    "fltrust": FLTrust,
    "foolsgold": FoolsGold,
}
TOLERATING_ONE_OUTLIER = [
    "krum",
    "multi_krum",
    "trimmed_mean",
    "trimmed_mean_fraction",
    "median",
    "bulyan",
    "rfa",
    "fltrust",
]


def _column(*values: float) -> torch.Tensor:
    """Updates of one parameter each: shape (len(values), 1), float64."""
    return torch.tensor(values, dtype=torch.float64)[:, None]


def _random_updates(num_clients: int = 7, num_params: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_clients, num_params, generator=generator, dtype=torch.float64)


def _run(rule: AggregationRule, updates: torch.Tensor, **keywords: object) -> torch.Tensor:
    """Call a rule with a server update pointing the honest way (ones) when it needs one."""
    if rule.requires_server_update and "server_update" not in keywords:
        keywords["server_update"] = torch.ones(updates.shape[1], dtype=updates.dtype)
    return rule(updates, **keywords)


# ---------------------------------------------------------------------------------------------
# Hand-checked values


def test_fedavg_is_the_sample_weighted_mean() -> None:
    # Prepare: (1 * [1, 0] + 3 * [3, 4]) / (1 + 3) = [10, 12] / 4 = [2.5, 3]
    updates = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    weights = torch.tensor([1.0, 3.0])

    # Execute
    result = fedavg(updates, weights=weights)

    # Assert
    torch.testing.assert_close(result, torch.tensor([2.5, 3.0]))
    assert result.dtype == torch.float32


def test_krum_picks_the_update_with_the_lowest_score() -> None:
    # Prepare: n = 5, f = 1, so n - f - 2 = 2 nearest others. Points 0, 1, 3, 6, 20:
    #   s(0)  = 1 + 9      = 10     (to 1, 3)
    #   s(1)  = 1 + 4      = 5      (to 0, 3)   <- lowest
    #   s(3)  = 4 + 9      = 13     (to 1, then 0 or 6)
    #   s(6)  = 9 + 25     = 34     (to 3, 1)
    #   s(20) = 196 + 289  = 485    (to 6, 3)
    updates = _column(0, 1, 3, 6, 20)

    # Execute
    chosen = krum(updates, num_malicious=1)
    two = krum(updates, num_malicious=1, num_selected=2)
    three = krum(updates, num_malicious=1, num_selected=3)

    # Assert
    torch.testing.assert_close(chosen, torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(two, torch.tensor([0.5], dtype=torch.float64))  # (1 + 0) / 2
    torch.testing.assert_close(three, torch.tensor([4 / 3], dtype=torch.float64))  # (1+0+3)/3


def test_krum_breaks_ties_toward_the_lower_index() -> None:
    # Prepare: points 0, 1, 2, 3, 10 with 2 neighbours: s(1) = 1 + 1 = s(2) = 1 + 1 = 2.
    # Rows 1 and 2 tie; Krum must return row 1, whichever way they are laid out.
    updates = _column(0, 1, 2, 3, 10)
    swapped = _column(0, 2, 1, 3, 10)

    # Execute
    chosen = krum(updates, num_malicious=1)
    chosen_swapped = krum(swapped, num_malicious=1)

    # Assert
    assert chosen.item() == 1.0
    assert chosen_swapped.item() == 2.0


def test_pairwise_squared_distances_are_exact_for_nearby_large_updates() -> None:
    # Prepare: two updates 1e-3 apart at magnitude 1e4: ||x||^2 + ||y||^2 - 2<x, y> loses the
    # answer (1e-6 * num_params) to cancellation in float32; the difference does not.
    base = torch.full((4,), 1e4, dtype=torch.float32)
    updates = torch.stack([base, base + 1e-3])
    expected = float(((updates[1].double() - updates[0].double()) ** 2).sum())
    expansion = updates.square().sum(1)[:, None] + updates.square().sum(1)[None] - 2 * (updates @ updates.T)

    # Execute
    distances = pairwise_squared_distances(updates)

    # Assert
    assert distances[0, 1].item() == pytest.approx(expected, rel=1e-12)
    assert distances[0, 1] == distances[1, 0]
    assert distances[0, 0] == 0
    assert expansion[0, 1].item() != pytest.approx(expected, rel=0.5)  # what we avoided


def test_trimmed_mean_drops_the_extremes_of_each_coordinate() -> None:
    # Prepare: b = 1 per side.
    #   column 0: 5, -100, 1, 2, 3   -> drop -100 and 5 -> (1 + 2 + 3) / 3 = 2
    #   column 1: 0, 0, 0, 0, 1e6    -> drop a 0 and 1e6 -> (0 + 0 + 0) / 3 = 0
    updates = torch.tensor([[5.0, 0.0], [-100.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 1e6]])

    # Execute
    result = trimmed_mean(updates, num_trimmed=1)

    # Assert
    torch.testing.assert_close(result, torch.tensor([2.0, 0.0]))
    assert result.dtype == torch.float32


@pytest.mark.parametrize(("num_clients", "num_trimmed"), [(47, 3), (44, 15), (3, 1), (9, 4)])
def test_trimmed_mean_drops_exactly_num_trimmed_where_b_over_n_times_n_rounds_down(
    num_clients: int, num_trimmed: int
) -> None:
    # Prepare: int(3 / 47 * 47) == 2 and int(15 / 44 * 44) == 14 in floating point; a cut
    # fraction of b / n would drop one value too few per side.
    updates = _random_updates(num_clients, 6, seed=num_clients)
    expected = torch.sort(updates, dim=0).values[num_trimmed : num_clients - num_trimmed].mean(0)

    # Execute
    result = trimmed_mean(updates, num_trimmed=num_trimmed)

    # Assert
    torch.testing.assert_close(result, expected)


@settings(max_examples=60, deadline=None)
@given(num_clients=st.integers(1, 60), data=st.data())
def test_trimmed_mean_matches_the_sorted_definition(num_clients: int, data: st.DataObject) -> None:
    # Prepare
    num_trimmed = data.draw(st.integers(0, (num_clients - 1) // 2))
    updates = _random_updates(num_clients, 3, seed=num_clients * 100 + num_trimmed)
    expected = torch.sort(updates, dim=0).values[num_trimmed : num_clients - num_trimmed].mean(0)

    # Execute
    result = trimmed_mean(updates, num_trimmed=num_trimmed)

    # Assert
    torch.testing.assert_close(result, expected)


def test_trim_fraction_is_read_as_the_written_decimal() -> None:
    # Prepare / Execute / Assert: floor(0.29 * 100) = 29, though 0.29 * 100 == 28.999999999999996
    assert math.floor(0.29 * 100) == 28
    assert trimmed_count(0.29, 100) == 29
    assert trimmed_count(0.2, 5) == 1  # floor(1.0)
    assert trimmed_count(0.0, 9) == 0


def test_median_is_the_true_median_for_even_and_odd_counts() -> None:
    # Prepare: odd  [3, 1, 2]    -> 2
    #          even [4, 1, 3, 2] -> (2 + 3) / 2 = 2.5 (torch.median would say 2)
    odd = _column(3, 1, 2)
    even = _column(4, 1, 3, 2)

    # Execute
    odd_median = coordinate_median(odd)
    even_median = coordinate_median(even)

    # Assert
    assert odd_median.item() == 2.0
    assert even_median.item() == 2.5
    assert torch.median(even).item() == 2.0  # the lower median we must not return


@pytest.mark.parametrize("num_clients", [4, 5, 6])
def test_median_equals_numpy_median_bit_for_bit(num_clients: int) -> None:
    # Prepare
    updates = _random_updates(num_clients, 200, seed=num_clients).float()

    # Execute
    result = coordinate_median(updates)

    # Assert
    assert torch.equal(result, torch.from_numpy(np.median(updates.numpy(), axis=0)))


def test_bulyan_selects_the_cluster_then_averages_around_the_median() -> None:
    # Prepare: n = 7, f = 1: theta = 7 - 2 = 5 selected, beta = 5 - 2 = 3 averaged.
    # Five honest points and two far outliers; iterated Krum selects the five honest ones
    # (every step, an outlier's score includes a distance >= 1e6).
    #   column 0 of the honest: 0, 1, 2, 5, 8     median 2, closest three 2, 1, 0  -> mean 1
    #   column 1 of the honest: 10, 11, 12, 13, 14 median 12, closest 12, 11, 13   -> mean 12
    updates = torch.tensor(
        [[0, 10], [1000, 1000], [1, 11], [2, 12], [-1000, -1000], [5, 13], [8, 14]],
        dtype=torch.float64,
    )

    # Execute
    result = bulyan(updates, num_malicious=1)

    # Assert
    torch.testing.assert_close(result, torch.tensor([1.0, 12.0], dtype=torch.float64))


def test_bulyan_breaks_equal_distances_to_the_median_toward_the_lower_value() -> None:
    # Prepare: n = 7, f = 1 (theta = 5, beta = 3); the five honest values 0, 1, 2, 4, 8 are
    # selected. Median 2, distances 2, 1, 0, 2, 6: the closest are 2 and 1, then 0 and 4 tie
    # at distance 2 and the lower value 0 is taken: (2 + 1 + 0) / 3 = 1, in any client order.
    honest = [[0.0], [1.0], [2.0], [4.0], [8.0]]
    updates = torch.tensor(honest + [[1e4], [-1e4]], dtype=torch.float64)
    reordered = updates[torch.tensor([6, 3, 0, 5, 4, 1, 2])]

    # Execute
    result = bulyan(updates, num_malicious=1)
    result_reordered = bulyan(reordered, num_malicious=1)

    # Assert
    assert result.item() == 1.0
    assert result_reordered.item() == 1.0


def test_geometric_median_of_collinear_points_is_the_middle_point() -> None:
    # Prepare: on a line, the geometric median of 0, 1, 10 is the 1-D median 1;
    # with weights 3 and 1 on 0 and 10, it is 0 (the point holding more than half the weight).
    points = _column(0, 1, 10)
    weighted = _column(0, 10)

    # Execute
    median = geometric_median(points, weights=torch.ones(3), tolerance=0.0, max_iterations=500)
    weighted_median = geometric_median(weighted, weights=torch.tensor([3.0, 1.0]), tolerance=0.0, max_iterations=500)

    # Assert
    torch.testing.assert_close(median, torch.tensor([1.0], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(weighted_median, torch.tensor([0.0], dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("tolerance", "max_iterations"), [(1e-6, 100), (1e-10, 1000)])
def test_geometric_median_satisfies_the_optimality_condition(tolerance: float, max_iterations: int) -> None:
    # Prepare: random points in general position (no point coincides with the median);
    # at the minimizer z of sum_i a_i ||x_i - z||, sum_i a_i (x_i - z) / ||x_i - z|| = 0.
    points = _random_updates(9, 3, seed=3)
    weights = torch.linspace(1.0, 3.0, 9, dtype=torch.float64)
    proportions = weights / weights.sum()

    # Execute
    median = geometric_median(points, weights=weights, tolerance=tolerance, max_iterations=max_iterations)

    # Assert
    differences = points - median
    distances = differences.norm(dim=1, keepdim=True)
    assert distances.min() > 1e-3
    gradient = (proportions[:, None] * differences / distances).sum(dim=0)
    assert gradient.norm() < 10 * tolerance


def test_fltrust_weights_by_trust_and_rescales_to_the_server_norm() -> None:
    # Prepare: g0 = [1, 0], ||g0|| = 1.
    #   g1 = [2, 0]:  cos 1,      TS 1,      rescaled [1, 0]
    #   g2 = [0, 3]:  cos 0,      TS 0
    #   g3 = [-1, 0]: cos -1,     TS 0 (ReLU)
    #   g4 = [3, 3]:  cos 1/sqrt2, TS 1/sqrt2, rescaled [1/sqrt2, 1/sqrt2]
    #   aggregate = (1 * [1, 0] + 1/sqrt2 * [1/sqrt2, 1/sqrt2]) / (1 + 1/sqrt2)
    #             = [1.5, 0.5] / (1 + 1/sqrt2)
    updates = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    server_update = torch.tensor([1.0, 0.0], dtype=torch.float64)
    expected = torch.tensor([1.5, 0.5], dtype=torch.float64) / (1 + 1 / math.sqrt(2))

    # Execute
    result = fltrust(updates, server_update=server_update)

    # Assert
    torch.testing.assert_close(result, expected)


@pytest.mark.parametrize(
    "server_update", [torch.tensor([-1.0, -1.0]), torch.tensor([0.0, 0.0])], ids=["opposed", "zero"]
)
def test_fltrust_with_zero_trust_keeps_the_model_and_warns(
    server_update: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: every client points away from g0 (or g0 = 0), so every TS_i = 0.
    updates = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.5, 0.5]])

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedshield.rules.fltrust"):
        result = FLTrust()(updates, server_update=server_update)

    # Assert
    assert torch.equal(result, torch.zeros(2))
    assert "every trust score is 0" in caplog.text


def test_fltrust_without_server_update_raises() -> None:
    # Prepare
    updates = torch.ones(3, 2)

    # Execute / Assert
    with pytest.raises(AggregationError, match="server_update"):
        FLTrust()(updates)


def test_foolsgold_weights_zero_out_sybils_and_pardon_honest_clients() -> None:
    # Prepare: histories S1 = S2 = [1, 0, 0] (sybils), H1 = [0.6, 0.8, 0], H2 = [0, 0, 1].
    #   cs(S1, S2) = 1, cs(H1, S) = 0.6, cs(H1, H2) = cs(S, H2) = 0
    #   v = max_j cs_ij = [1, 1, 0.6, 0]
    #   pardoning H1 (v 0.6 < v_S 1): cs(H1, S) = 0.6 * 0.6 / 1 = 0.36
    #   alpha = 1 - max_j cs_ij = [0, 0, 0.64, 1]; / max = same; 1 -> 0.99
    #   kappa = 0.5: H1: 0.5 * (ln(0.64 / 0.36) + 0.5) = 0.5 * (0.575364 + 0.5) = 0.537682
    #                H2: 0.5 * (ln(99) + 0.5) = 2.55 -> clipped to 1;  sybils: ln(0) -> 0
    history = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor([0.0, 0.0, 0.5 * (math.log(0.64 / 0.36) + 0.5), 1.0])

    # Execute
    weights = foolsgold_weights(history, confidence=0.5)

    # Assert
    torch.testing.assert_close(weights, expected.double())


def _reference_foolsgold(history: np.ndarray) -> np.ndarray:
    """The loop version of the authors' code (DistributedML/FoolsGold), kappa = 1."""
    num_clients = history.shape[0]
    norms = np.linalg.norm(history, axis=1)
    similarity = history @ history.T / np.outer(norms, norms) - np.eye(num_clients)
    largest = similarity.max(axis=1)
    for i in range(num_clients):
        for j in range(num_clients):
            if i != j and largest[i] < largest[j]:
                similarity[i, j] *= largest[i] / largest[j]
    weights = 1 - similarity.max(axis=1)
    weights[weights > 1] = 1
    weights[weights < 0] = 0
    weights = weights / weights.max()
    weights[weights == 1] = 0.99
    with np.errstate(divide="ignore"):
        weights = np.log(weights / (1 - weights)) + 0.5
    weights[(np.isinf(weights) + weights > 1)] = 1
    weights[weights < 0] = 0
    return weights


@pytest.mark.parametrize("seed", range(5))
def test_foolsgold_weights_match_a_loop_port_of_the_reference_code(seed: int) -> None:
    # Prepare: a shared direction makes some cosines large, so every step matters.
    history = _random_updates(6, 4, seed=seed) + torch.tensor([2.0, 0.0, 0.0, 0.0]).double()

    # Execute
    weights = foolsgold_weights(history)

    # Assert
    expected = torch.from_numpy(_reference_foolsgold(history.numpy()))
    torch.testing.assert_close(weights, expected)


def test_foolsgold_accumulates_history_by_client_id() -> None:
    # Prepare: round 1, clients 7 and 8 send orthogonal updates; round 2 they send the same
    # update [1, 1]. The histories [2, 1] and [1, 2] are not identical in direction, so both
    # keep weight; a fresh instance sees only [1, 1] twice (identical: both weights 0).
    rule = FoolsGold()
    round_one = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    round_two = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)

    # Execute
    rule(round_one, client_ids=[7, 8])
    with_history = rule(round_two, client_ids=[7, 8])
    without_history = FoolsGold()(round_two, client_ids=[7, 8])

    # Assert
    torch.testing.assert_close(with_history, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert torch.equal(without_history, torch.zeros(2, dtype=torch.float64))


def test_foolsgold_aggregate_is_the_weighted_average_of_current_updates() -> None:
    # Prepare: history as in the sybil test; with kappa = 1 the weights are
    # [0, 0, clip(ln(0.64 / 0.36) + 0.5 = 1.075), clip(ln(99) + 0.5)] = [0, 0, 1, 1], so
    # aggregate = (1 * [1, 2, 3] + 1 * [3, 4, 5]) / (1 + 1) = [2, 3, 4].
    history = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    updates = torch.tensor([[9.0, 9.0, 9.0], [9.0, 9.0, 9.0], [1.0, 2.0, 3.0], [3.0, 4.0, 5.0]], dtype=torch.float64)

    # Execute
    result = foolsgold(updates, history=history)

    # Assert
    torch.testing.assert_close(result, torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Properties of every rule


@pytest.mark.parametrize("name", ALL_RULES)
def test_rule_is_invariant_to_the_order_of_the_clients(name: str) -> None:
    # Prepare
    updates = _random_updates(7, 5, seed=11)
    weights = torch.arange(1.0, 8.0, dtype=torch.float64)
    client_ids = list(range(100, 107))
    permutation = torch.tensor([3, 6, 0, 5, 1, 4, 2])
    server_update = torch.full((5,), 0.5, dtype=torch.float64)

    # Execute
    original = _run(
        ALL_RULES[name](),
        updates,
        weights=weights,
        client_ids=client_ids,
        server_update=server_update,
    )
    permuted = _run(
        ALL_RULES[name](),
        updates[permutation],
        weights=weights[permutation],
        client_ids=[client_ids[index] for index in permutation],
        server_update=server_update,
    )

    # Assert
    torch.testing.assert_close(permuted, original)


def test_foolsgold_is_invariant_to_the_order_of_the_clients_across_rounds() -> None:
    # Prepare: three rounds of six clients; the second instance sees each round shuffled
    # differently (rows and ids together), so its history lookups must follow the ids.
    rounds = [_random_updates(6, 4, seed=seed) for seed in (21, 22, 23)]
    client_ids = [5, 9, 2, 7, 4, 8]
    permutations = [torch.tensor(order) for order in ([2, 0, 1, 5, 3, 4], [5, 4, 3, 2, 1, 0], [1, 3, 5, 0, 2, 4])]
    in_order, shuffled = FoolsGold(), FoolsGold()

    # Execute
    for updates, permutation in zip(rounds, permutations, strict=True):
        expected = in_order(updates, client_ids=client_ids)
        result = shuffled(updates[permutation], client_ids=[client_ids[index] for index in permutation])

        # Assert
        torch.testing.assert_close(result, expected)


@pytest.mark.parametrize("name", TOLERATING_ONE_OUTLIER)
def test_single_outlier_is_ignored(name: str) -> None:
    # Prepare: six identical honest updates, one at 1e6.
    updates = torch.ones(7, 3)
    updates[0] = 1e6

    # Execute
    result = _run(ALL_RULES[name](), updates)

    # Assert
    torch.testing.assert_close(result, torch.ones(3))


def test_rfa_moves_only_boundedly_however_large_the_outlier() -> None:
    # Prepare: six honest random points; the seventh at scale * (1, 1, 1), scale 1e6 or 1e12.
    # The geometric median depends on the outlier only through its direction (up to
    # O(1 / scale)), so it must stay inside the honest cloud and barely move between scales.
    # (A stopping test on the objective's relative decrease would stop ~1.7e-8 * scale away.)
    honest = _random_updates(6, 3, seed=5)
    radius = (honest - honest.mean(0)).norm(dim=1).max()

    def with_outlier(scale: float) -> torch.Tensor:
        return torch.cat([honest, torch.full((1, 3), scale, dtype=torch.float64)])

    # Execute
    near = RFA()(with_outlier(1e6))
    far = RFA()(with_outlier(1e12))
    mean = fedavg(with_outlier(1e6), weights=torch.ones(7))

    # Assert
    assert (near - honest.mean(0)).norm() <= radius
    torch.testing.assert_close(far, near, atol=1e-5, rtol=0)
    assert (mean - honest.mean(0)).norm() > 1e5  # the mean moves by scale / 7


@pytest.mark.parametrize("name", ALL_RULES)
def test_rule_is_bit_exactly_deterministic(name: str) -> None:
    # Prepare
    updates = _random_updates(7, 64, seed=13).float()
    weights = torch.arange(1.0, 8.0)

    # Execute
    first = _run(ALL_RULES[name](), updates, weights=weights)
    second = _run(ALL_RULES[name](), updates.clone(), weights=weights.clone())

    # Assert
    assert torch.equal(first, second)
    assert first.shape == (64,)
    assert first.dtype == torch.float32


@pytest.mark.parametrize("name", ALL_RULES)
def test_rule_does_not_mutate_its_input(name: str) -> None:
    # Prepare
    updates = _random_updates(7, 5, seed=17)
    snapshot = updates.clone()

    # Execute
    _run(ALL_RULES[name](), updates)

    # Assert
    assert torch.equal(updates, snapshot)


# ---------------------------------------------------------------------------------------------
# Preconditions and parameter errors


@pytest.mark.parametrize(
    ("rule", "num_clients"),
    [
        (Krum(num_malicious=2), 6),
        (MultiKrum(num_malicious=1, num_selected=6), 5),
        (TrimmedMean(num_trimmed=2), 4),
        (Bulyan(num_malicious=1), 6),
        (Median(), 0),
        (FedAvg(), 0),
    ],
    ids=["krum", "multi_krum", "trimmed_mean", "bulyan", "median", "fedavg"],
)
def test_rule_below_its_client_budget_raises(rule: AggregationRule, num_clients: int) -> None:
    # Prepare
    updates = torch.ones(num_clients, 3)

    # Execute / Assert
    assert rule.min_clients() == num_clients + 1
    with pytest.raises(ByzantineBudgetError, match="num_clients"):
        _run(rule, updates)
    _run(rule, torch.ones(num_clients + 1, 3))  # exactly at the budget it runs


def test_budget_error_names_the_parameter_the_bound_and_the_value() -> None:
    # Prepare
    updates = torch.ones(5, 3)

    # Execute / Assert
    with pytest.raises(ByzantineBudgetError) as raised:
        Krum(num_malicious=2)(updates)
    assert str(raised.value) == (
        "krum needs num_clients >= 2 * num_malicious + 3 = 7 (num_malicious=2); got num_clients=5"
    )
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    ("function", "keywords"),
    [
        (krum, {"num_malicious": 1}),
        (bulyan, {"num_malicious": 1}),
        (trimmed_mean, {"num_trimmed": 2}),
    ],
    ids=["krum", "bulyan", "trimmed_mean"],
)
def test_pure_function_below_its_client_budget_raises(function, keywords: dict) -> None:
    # Prepare: Krum needs 5, Bulyan 7, trimmed mean with b = 2 needs 5.
    updates = torch.ones(4, 3)

    # Execute / Assert
    with pytest.raises(ByzantineBudgetError, match="num_clients"):
        function(updates, **keywords)


@pytest.mark.parametrize(
    ("build", "parameter"),
    [
        (lambda: Krum(num_malicious=-1), "num_malicious"),
        (lambda: MultiKrum(num_malicious=1, num_selected=0), "num_selected"),
        (lambda: Bulyan(num_malicious=1.5), "num_malicious"),
        (lambda: TrimmedMean(), "exactly one"),
        (lambda: TrimmedMean(num_trimmed=1, trim_fraction=0.1), "exactly one"),
        (lambda: TrimmedMean(trim_fraction=0.5), "trim_fraction"),
        (lambda: TrimmedMean(num_trimmed=-1), "num_trimmed"),
        (lambda: RFA(smoothing=0.0), "smoothing"),
        (lambda: RFA(max_iterations=0), "max_iterations"),
        (lambda: FoolsGold(confidence=0.0), "confidence"),
    ],
)
def test_invalid_parameters_raise_value_error_naming_them(build, parameter: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=parameter):
        build()


@pytest.mark.parametrize(
    ("updates", "weights", "message"),
    [
        (torch.ones(3), torch.ones(3), "2-D"),
        (torch.ones(3, 2, dtype=torch.int64), torch.ones(3), "floating"),
        (torch.ones(3, 2), torch.ones(2), "weights must have shape"),
        (torch.ones(3, 2), torch.tensor([1.0, -1.0, 1.0]), ">= 0"),
        (torch.ones(3, 2), torch.zeros(3), "sum to > 0"),
    ],
)
def test_malformed_input_raises_aggregation_error(updates, weights, message: str) -> None:
    # Execute / Assert
    with pytest.raises(AggregationError, match=message):
        fedavg(updates, weights=weights)
