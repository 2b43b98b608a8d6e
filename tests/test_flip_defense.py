"""FlipHardening.prepare: warm-up, pair rounds, state round trip, determinism, untouched model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedshield.flip import FlipConfig, FlipConfigError, FlipHardening
from fedshield.flip.class_distance import ClassDistanceCache
from fedshield.task.determinism import torch_generator
from helpers import backdoored_logistic, stamp_square_poison

# The module fixture trains a backdoored logistic regression (300 SGD steps) that every test uses.
pytestmark = pytest.mark.slow

TARGET = 2


def stamp_square(x: torch.Tensor) -> torch.Tensor:
    stamped = x.clone()
    stamped[:, :, -4:, -4:] = 1.0
    return stamped


@pytest.fixture(scope="module")
def client():
    """A backdoored logistic regression (the global model) and one benign client's 600 samples."""
    return backdoored_logistic(stamp_square_poison(TARGET))


def prepared(flip: FlipHardening, model, x, y, **kwargs):
    """``start`` a round and read its transform and state without training (the state a client
    would keep had its training used no batch)."""
    round_ = flip.start(model, x, y, **kwargs)
    return round_.transform, round_.new_state()


def defense(**overrides) -> FlipHardening:
    settings = dict(num_classes=10, warmup_rounds=1, pairs_per_round=2, inversion_steps=150, exploration=0.0)
    return FlipHardening(FlipConfig(**(settings | overrides)))


def test_warmup_finds_the_backdoor_target_and_round_trips_its_state(client):
    # Prepare
    model, x, y = client
    parameters = copy.deepcopy(model.state_dict())
    state = {"other.key": np.arange(3)}

    # Execute
    transform, new_state = prepared(defense(), model, x, y, server_round=1, state=state, generator=torch_generator(0))

    # Assert
    assert transform is not None
    cache = ClassDistanceCache.from_state(new_state, 10)
    column_means = np.nanmean(cache.distances, axis=0)
    assert int(np.argmin(column_means)) == TARGET
    assert new_state["flip.participations"].tolist() == [1]
    np.testing.assert_array_equal(new_state["other.key"], np.arange(3))
    assert set(state) == {"other.key"}  # the incoming state is not modified
    restored = ClassDistanceCache.from_state({k: v.copy() for k, v in new_state.items()}, 10)
    np.testing.assert_array_equal(restored.distances, cache.distances)
    for name, value in model.state_dict().items():
        assert torch.equal(value, parameters[name])
    assert all(parameter.grad is None for parameter in model.parameters())


def test_later_rounds_invert_the_closest_pairs_and_harden(client):
    model, x, y = client
    flip = defense()
    _, state = prepared(flip, model, x, y, server_round=1, state={}, generator=torch_generator(0))
    visits_before = state["flip.class_visits"].copy()

    transform, state = prepared(flip, model, x, y, server_round=2, state=state, generator=torch_generator(1))

    new_visits = np.argwhere(state["flip.class_visits"] > visits_before)
    assert {int(target) for _, target in new_visits} >= {TARGET}  # the closest pairs lead to label 2
    assert transform is not None
    batch_x, batch_y = x[:32], y[:32]
    out_x, out_y = transform(batch_x, batch_y, torch_generator(2))
    assert len(out_y) > len(batch_y) and torch.equal(out_y[:32], batch_y)


def test_prepare_is_deterministic_given_the_generator(client):
    model, x, y = client
    flip = defense(exploration=0.5)
    outcomes = []
    for _ in range(2):
        _, state = prepared(flip, model, x, y, server_round=1, state={}, generator=torch_generator(3))
        transform, state = prepared(flip, model, x, y, server_round=4, state=state, generator=torch_generator(4))
        outcomes.append((state, transform(x[:64], y[:64], torch_generator(5))))
    (state_a, (x_a, y_a)), (state_b, (x_b, y_b)) = outcomes
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key])
    assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)


def test_ablation_without_adversarial_training_only_inverts(client):
    model, x, y = client
    transform, state = prepared(
        defense(adversarial_training=False, universal_targets_per_round=3),
        model,
        x,
        y,
        server_round=1,
        state={},
        generator=torch_generator(0),
    )
    assert transform is None
    assert int(state["flip.class_visits"].sum()) == 3 * 9  # three targets, nine sources each


def test_tabular_inputs_and_bad_settings_are_rejected(client):
    model, _, y = client
    with pytest.raises(FlipConfigError, match="image"):
        prepared(defense(), model, torch.zeros(600, 784), y, server_round=1, state={}, generator=torch_generator(0))
    with pytest.raises(FlipConfigError, match="stamped_share"):
        defense(stamped_share=0.0)
    with pytest.raises(FlipConfigError, match="labels"):
        defense(num_classes=2).start(
            model,
            torch.zeros(3, 1, 28, 28),
            torch.tensor([0, 1, 5]),
            server_round=1,
            state={},
            generator=torch_generator(0),
        )
