"""Factored client updates (``vec(L R)`` plus a tail), as batched plain SGD returns them.

Screening must decide a factored update exactly as it decides the same update multiplied out
(it may keep it factored only when the decision is certain), FedAvg of factored updates must be
FedAvg of the dense ones up to float rounding, and every other rule must see the dense updates.
"""

from __future__ import annotations

import math

import pytest
import torch

from fedshield.rules import FedAvg, Krum, aggregate_screened, screen_updates
from fedshield.rules.errors import AggregationError
from fedshield.rules.fedavg import fedavg, fedavg_factored
from fedshield.server.rounds import aggregate_factored_rounds, aggregate_round
from fedshield.task.updates import FactoredUpdate, dense_update

OUT, SAMPLES, INPUTS, TAIL = 16, 5, 40, 7
NUM_PARAMS = OUT * INPUTS + TAIL


def _factored(seed: int, *, scale: float = 1e-2, samples: int = SAMPLES) -> FactoredUpdate:
    generator = torch.Generator().manual_seed(seed)
    return FactoredUpdate(
        torch.randn(OUT, samples, generator=generator) * scale,
        torch.rand(samples, INPUTS, generator=generator),
        torch.randn(TAIL, generator=generator) * scale,
    )


def _screen(updates, max_norm: float = 1e6):
    return screen_updates(
        updates, list(range(len(updates))), num_params=NUM_PARAMS, dtype=torch.float32, max_norm=max_norm
    )


def test_dense_is_the_product_then_the_tail():
    update = _factored(0)

    flat = update.dense()

    assert flat.shape == (NUM_PARAMS,) and update.shape == (NUM_PARAMS,)
    torch.testing.assert_close(flat[: OUT * INPUTS].view(OUT, INPUTS), update.left @ update.right, rtol=0, atol=0)
    assert torch.equal(flat[OUT * INPUTS :], update.tail)
    assert dense_update(update).equal(flat) and dense_update(flat) is flat


@pytest.mark.parametrize("seed", range(20))
def test_norm_bound_is_never_below_the_dense_norm(seed):
    update = _factored(seed, samples=1 + seed % 6)

    dense_norm = float(torch.linalg.vector_norm(update.dense().double()))

    assert update.norm_bound() >= dense_norm * (1 - 1e-6)


def test_norm_bound_is_tight_for_a_rank_one_first_layer():
    # ||u v^T||_F = ||u|| ||v||: the bound is the norm itself.
    update = FactoredUpdate(torch.randn(OUT, 1), torch.randn(1, INPUTS), torch.randn(TAIL))

    assert update.norm_bound() == pytest.approx(float(update.dense().double().norm()), rel=1e-6)


def test_a_factored_update_far_below_max_norm_is_kept_factored():
    updates = [_factored(1), _factored(2)]

    result = _screen(updates)

    assert result.kept[0] is updates[0] and result.kept[1] is updates[1]
    assert result.rejected == () and result.all_factored
    torch.testing.assert_close(result.updates, torch.stack([u.dense() for u in updates]), rtol=0, atol=0)


@pytest.mark.parametrize("where", ["left", "right", "tail"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_or_inf_in_any_factor_is_dropped_as_the_dense_update_would_be(where, bad):
    update = _factored(3)
    getattr(update, where).view(-1)[1] = bad

    result = _screen([update, _factored(4)])

    assert result.client_ids == (1,)
    assert result.rejected == ((0, "update contains NaN or inf"),)


def test_near_max_norm_the_dense_update_decides():
    # A rank-5 first layer: the bound exceeds the true norm, so a max_norm between the two
    # keeps the update (multiplied out), and one below the true norm drops it.
    update = _factored(5, scale=1.0)
    norm, bound = float(update.dense().double().norm()), update.norm_bound()
    assert norm < 0.99 * bound

    between = _screen([update], max_norm=(norm + bound) / 2)
    below = _screen([update], max_norm=0.99 * norm)

    assert between.client_ids == (0,) and not between.all_factored
    torch.testing.assert_close(between.updates[0], update.dense(), rtol=0, atol=0)
    assert below.client_ids == () and below.rejected[0][1].startswith("update has L2 norm")


def test_a_factored_update_of_the_wrong_size_is_dropped_naming_its_shape():
    wrong = FactoredUpdate(torch.zeros(OUT, SAMPLES), torch.zeros(SAMPLES, INPUTS + 1), torch.zeros(TAIL))

    result = _screen([wrong])

    assert result.rejected == ((0, f"update has shape ({NUM_PARAMS + OUT},), expected ({NUM_PARAMS},)"),)


def _assert_within_rounding(together, updates, weights):
    """Each entry within a few ``K eps`` of the sum of the magnitudes of its terms (K = sum m_i
    float32 products, the float rounding of the one product) of FedAvg of the dense updates."""
    reference = fedavg(torch.stack([u.dense() for u in updates]), weights=weights)
    magnitudes = fedavg(
        torch.stack([FactoredUpdate(u.left.abs(), u.right.abs(), u.tail.abs()).dense() for u in updates]),
        weights=weights,
    )
    products = sum(u.left.shape[1] for u in updates)
    assert together.dtype == reference.dtype and together.shape == reference.shape
    tolerance = 4 * (products + 2) * torch.finfo(torch.float32).eps * magnitudes + 1e-30
    assert bool(((together - reference).abs() <= tolerance).all())


def test_factored_fedavg_is_fedavg_of_the_dense_updates():
    updates = [_factored(seed, samples=2 + seed) for seed in range(4)]
    weights = torch.tensor([3.0, 8.0, 1.0, 5.0])

    together = fedavg_factored(updates, weights=weights)

    _assert_within_rounding(together, updates, weights)


def test_factored_fedavg_refuses_mixed_layouts_and_bad_weights():
    other = FactoredUpdate(torch.zeros(OUT + 1, SAMPLES), torch.zeros(SAMPLES, INPUTS), torch.zeros(TAIL))

    with pytest.raises(AggregationError, match="layout"):
        fedavg_factored([_factored(0), other], weights=torch.ones(2))
    with pytest.raises(AggregationError, match="finite and >= 0"):
        fedavg_factored([_factored(0), _factored(1)], weights=torch.tensor([1.0, -1.0]))


def test_fedavg_aggregates_factors_without_multiplying_out_each_update():
    result = _screen([_factored(6), _factored(7)])

    aggregate, reason = aggregate_screened(FedAvg(), result, weights_by_id={0: 2.0, 1: 6.0})

    assert reason is None and aggregate is not None
    assert "updates" not in vars(result)  # the stacked dense matrix was never formed
    _assert_within_rounding(aggregate, list(result.kept), torch.tensor([2.0, 6.0]))


def test_other_rules_get_the_dense_updates():
    updates = [_factored(seed) for seed in range(7)]
    result = _screen(updates)

    aggregate, _ = aggregate_screened(Krum(num_malicious=2), result, weights_by_id=dict.fromkeys(range(7), 1.0))

    dense, _ = aggregate_screened(
        Krum(num_malicious=2), _screen([u.dense() for u in updates]), weights_by_id=dict.fromkeys(range(7), 1.0)
    )
    assert aggregate is not None and dense is not None and torch.equal(aggregate, dense)


def _job_replies(seed: int, clients: int) -> dict[int, FactoredUpdate]:
    return {10 * seed + i: _factored(100 * seed + i, samples=1 + (seed + i) % 4) for i in range(clients)}


@pytest.mark.parametrize("server_learning_rate", [1.0, 0.5])
def test_many_jobs_at_once_step_as_each_job_alone(server_learning_rate):
    # Prepare: 5 FedAvg jobs of 1 to 5 clients with 1 to 4 samples each.
    jobs = [_job_replies(seed, clients=1 + seed) for seed in range(5)]
    params = [torch.randn(NUM_PARAMS, generator=torch.Generator().manual_seed(seed)) for seed in range(5)]
    counts = [{uid: 3 + uid % 7 for uid in replies} for replies in jobs]
    options = {"max_update_norm": 1e6, "server_learning_rate": server_learning_rate}

    # Execute
    together = aggregate_factored_rounds([FedAvg() for _ in jobs], params, jobs, counts, **options)

    # Assert: each job's outcome is aggregate_round's, up to the rounding of the product.
    for outcome, replies, start, job_counts in zip(together, jobs, params, counts, strict=True):
        alone = aggregate_round(FedAvg(), start, replies, job_counts, **options)
        assert outcome is not None
        assert (outcome.num_replies, outcome.rejected, outcome.skipped_reason) == (len(replies), (), None)
        torch.testing.assert_close(outcome.params, alone.params, rtol=1e-6, atol=1e-7)


def test_a_job_screening_might_change_is_left_to_aggregate_round():
    # Prepare: job 1 holds an update whose norm bound exceeds max_norm (its true norm does not),
    # job 2 a NaN, job 3 a dense update, job 4 nothing; job 0 is plain.
    jobs = [_job_replies(seed, clients=2) for seed in range(5)]
    big = _factored(7, scale=1.0)
    norm, bound = float(big.dense().double().norm()), big.norm_bound()
    jobs[1][10] = big
    jobs[2][20].tail[0] = math.nan
    jobs[3][30] = jobs[3][30].dense()
    jobs[4] = {}
    params = [torch.zeros(NUM_PARAMS) for _ in jobs]
    counts = [dict.fromkeys(replies, 1) for replies in jobs]

    # Execute
    outcomes = aggregate_factored_rounds(
        [FedAvg() for _ in jobs], params, jobs, counts, max_update_norm=(norm + bound) / 2
    )

    # Assert
    assert outcomes[0] is not None and outcomes[1:] == [None, None, None, None]


def test_only_rules_that_average_factors_take_the_batched_step():
    jobs = [_job_replies(seed, clients=7) for seed in range(2)]

    outcomes = aggregate_factored_rounds(
        [Krum(num_malicious=2) for _ in jobs],
        [torch.zeros(NUM_PARAMS) for _ in jobs],
        jobs,
        [dict.fromkeys(replies, 1) for replies in jobs],
        max_update_norm=1e6,
    )

    assert outcomes == [None, None]
