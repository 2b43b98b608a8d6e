"""The per-client class-distance cache and FLIP's choice of label pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedshield.flip.class_distance import (
    ClassDistanceCache,
    ClassDistanceError,
    choose_pairs,
)
from fedshield.flip.inversion import InvertedTrigger
from fedshield.task.determinism import torch_generator


def trigger(*, sources: tuple[int, ...], target: int, mask_l1: float, converged: bool = True) -> InvertedTrigger:
    return InvertedTrigger(
        mask=torch.zeros(1, 4, 4),
        pattern=torch.zeros(1, 4, 4),
        mask_l1=mask_l1,
        attack_success=0.95,
        target_label=target,
        source_labels=sources,
        converged=converged,
    )


def test_cache_round_trips_through_state():
    # Prepare
    cache = ClassDistanceCache.empty(4)
    cache.update(trigger(sources=(0, 1, 3), target=2, mask_l1=5.0))
    cache.update(trigger(sources=(1,), target=0, mask_l1=12.5))
    cache.update(trigger(sources=(3,), target=1, mask_l1=80.0, converged=False))

    # Execute
    state = cache.to_state()
    restored = ClassDistanceCache.from_state(state, 4)

    # Assert
    assert all(isinstance(value, np.ndarray) for value in state.values())
    np.testing.assert_array_equal(restored.distances, cache.distances)
    np.testing.assert_array_equal(restored.visits, cache.visits)
    assert restored.distances[0, 2] == restored.distances[1, 2] == restored.distances[3, 2] == 5.0
    assert restored.distances[1, 0] == 12.5
    assert restored.distances[3, 1] == np.inf  # inversion ran but never reached its threshold
    assert np.isnan(restored.distances[2, 0]) and np.isnan(restored.distances[0, 0])
    assert restored.visits[1, 0] == 1 and restored.visits.sum() == 5


def test_from_state_copies_and_does_not_share_memory():
    state = ClassDistanceCache.empty(3).to_state()
    cache = ClassDistanceCache.from_state(state, 3)
    cache.update(trigger(sources=(0,), target=1, mask_l1=1.0))
    assert np.isnan(state["flip.class_distance"][0, 1])


def test_from_state_rejects_a_cache_for_another_label_count():
    state = ClassDistanceCache.empty(3).to_state()
    with pytest.raises(ClassDistanceError, match="num_classes=4"):
        ClassDistanceCache.from_state(state, 4)


def test_greedy_choice_takes_smallest_distances_first():
    cache = ClassDistanceCache.empty(4)
    cache.update(trigger(sources=(0, 1, 3), target=2, mask_l1=5.0))  # a backdoor-like target
    cache.update(trigger(sources=(1,), target=0, mask_l1=30.0))
    cache.update(trigger(sources=(0,), target=1, mask_l1=3.0))
    pairs = choose_pairs(cache, num_pairs=4, exploration=0.0, generator=torch_generator(0))
    assert pairs == [(0, 1), (0, 2), (1, 2), (3, 2)]


def test_choice_is_deterministic_for_a_seeded_generator_and_explores_unknown_pairs():
    cache = ClassDistanceCache.empty(6)
    cache.update(trigger(sources=(0, 1, 2, 3, 5), target=4, mask_l1=7.0))
    runs = [choose_pairs(cache, num_pairs=5, exploration=0.5, generator=torch_generator(11)) for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 5 and all(source != target for source, target in runs[0])
    explored = choose_pairs(cache, num_pairs=5, exploration=1.0, generator=torch_generator(11))
    assert all(np.isnan(cache.distances[pair]) for pair in explored)


def test_choice_respects_the_labels_the_client_holds():
    cache = ClassDistanceCache.empty(5)
    pairs = choose_pairs(cache, num_pairs=100, exploration=0.3, generator=torch_generator(1), source_labels=[2, 4])
    assert sorted(pairs) == sorted((s, t) for s in (2, 4) for t in range(5) if t != s)


@pytest.mark.parametrize(("num_pairs", "exploration"), [(0, 0.3), (2, -0.1), (2, 1.5)])
def test_bad_choice_settings_are_rejected(num_pairs, exploration):
    with pytest.raises(ClassDistanceError):
        choose_pairs(
            ClassDistanceCache.empty(3),
            num_pairs=num_pairs,
            exploration=exploration,
            generator=torch_generator(0),
        )


def test_exploration_draws_measured_pairs_once_every_pair_is_measured():
    cache = ClassDistanceCache.empty(4)
    rng = np.random.default_rng(0)
    for source in range(4):
        for target in range(4):
            if source != target:
                cache.distances[source, target] = rng.uniform(1, 10)
    greedy = choose_pairs(cache, num_pairs=3, exploration=0.0, generator=torch_generator(0))
    explored = [
        tuple(choose_pairs(cache, num_pairs=3, exploration=1.0, generator=torch_generator(seed))) for seed in range(20)
    ]
    assert len(set(explored)) > 1 and any(set(pairs) != set(greedy) for pairs in explored)
    assert all(len(set(pairs)) == 3 for pairs in explored)
