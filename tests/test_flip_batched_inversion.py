"""Batched trigger inversion (one Adam loop for several triggers) against one-by-one inversion."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedshield.flip import FlipConfig, FlipHardening
from fedshield.flip.class_distance import DISTANCE_KEY, ClassDistanceCache, choose_pairs
from fedshield.flip.client import plan_problem, stored_triggers
from fedshield.flip.inversion import (
    InversionConfig,
    InvertedTrigger,
    direction_problem,
    invert_batch,
    invert_problem,
    is_plausible,
)
from fedshield.task.determinism import torch_generator
from helpers import backdoored_logistic, stamp_square_poison

TARGET = 2
# invert_batch's stated tolerance against invert_problem (float reassociation in the batched
# kernels): masks and patterns within 1e-3, the same convergence and plausibility.
TOLERANCE = 1e-3
MAX_MASK_FRACTION = 0.125


@pytest.fixture(scope="module")
def client():
    """A backdoored logistic regression (150 SGD steps, ~0.3 s) and one benign client's samples."""
    return backdoored_logistic(stamp_square_poison(TARGET), steps=150)


@pytest.fixture(scope="module")
def problems(client):
    """Inversions that differ in everything a batch must keep apart: universal and pair, sample
    counts (3 x 9, 2 x 4, 20, 12, 10), fresh and warm starts, step budgets, early-stop patience."""
    model, x, y = client
    generator = torch_generator(0)
    fresh = InversionConfig(steps=60, early_stop_patience=15)
    warm_mask = torch.zeros(1, 28, 28)
    warm_mask[:, -5:, -5:] = 0.9
    return [
        direction_problem(
            x,
            y,
            source_labels=tuple(label for label in range(10) if label != target),
            target=target,
            samples_per_label=3,
            generator=generator,
            config=fresh,
        )
        for target in (0, TARGET, 7)
    ] + [
        direction_problem(
            x, y, source_labels=(1, 3, 5, 8), target=TARGET, samples_per_label=2, generator=generator, config=fresh
        ),
        direction_problem(x, y, source_labels=(3,), target=5, samples_per_label=20, generator=generator, config=fresh),
        direction_problem(
            x,
            y,
            source_labels=(7,),
            target=TARGET,
            samples_per_label=12,
            generator=generator,
            config=InversionConfig(steps=25, early_stop_patience=5),
            initial_mask=warm_mask,
            initial_pattern=torch.ones(1, 28, 28),
        ),
        # Too few steps to reach the success threshold: returns its last iterate, unconverged.
        direction_problem(
            x,
            y,
            source_labels=(9,),
            target=4,
            samples_per_label=10,
            generator=generator,
            config=InversionConfig(steps=4),
        ),
    ]


def assert_agree(batched: InvertedTrigger, reference: InvertedTrigger) -> None:
    assert (batched.target_label, batched.source_labels) == (reference.target_label, reference.source_labels)
    assert float((batched.mask - reference.mask).abs().max()) <= TOLERANCE
    assert float((batched.pattern - reference.pattern).abs().max()) <= TOLERANCE
    assert batched.mask_l1 == pytest.approx(reference.mask_l1, rel=TOLERANCE)
    assert batched.converged == reference.converged
    plausible = [is_plausible(t, max_mask_fraction=MAX_MASK_FRACTION) for t in (batched, reference)]
    assert plausible[0] == plausible[1]


def test_batched_inversion_matches_one_by_one(client, problems):
    # Prepare
    model = client[0]

    # Execute
    batched = invert_batch(model, problems)
    one_by_one = [invert_problem(model, problem) for problem in problems]

    # Assert
    assert len(batched) == len(problems)
    for together, alone in zip(batched, one_by_one, strict=True):
        assert_agree(together, alone)
    # The batch holds converged and unconverged, plausible and implausible triggers alike.
    assert {t.converged for t in one_by_one} == {True, False}
    assert {is_plausible(t, max_mask_fraction=MAX_MASK_FRACTION) for t in one_by_one} == {True, False}
    assert all(parameter.grad is None for parameter in model.parameters())


def test_a_trigger_does_not_depend_on_its_batch_companions(client, problems):
    # Prepare
    model = client[0]
    subset = [1, 4, 6]

    # Execute
    everything = invert_batch(model, problems)
    some = invert_batch(model, [problems[index] for index in subset])
    reversed_order = invert_batch(model, problems[::-1])[::-1]

    # Assert
    for index, trigger in zip(subset, some, strict=True):
        assert_agree(trigger, everything[index])
    for trigger, reference in zip(reversed_order, everything, strict=True):
        assert_agree(trigger, reference)


def test_batched_inversion_is_bit_identical_run_to_run(client, problems):
    # Prepare
    model = client[0]

    # Execute
    first, second = invert_batch(model, problems), invert_batch(model, problems)

    # Assert
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.mask, b.mask) and torch.equal(a.pattern, b.pattern)
        assert (a.mask_l1, a.attack_success, a.converged) == (b.mask_l1, b.attack_success, b.converged)


def replay_one_by_one(config: FlipConfig, model, x, y, plan, state, generator) -> list[InvertedTrigger]:
    """FLIP's plan run as before batching: direction after direction, each warm-starting from
    the warm-start cache as the directions before it left it."""
    stored = stored_triggers(state)
    triggers = []
    for direction in plan:
        trigger = invert_problem(model, plan_problem(config, x, y, direction, stored=stored, generator=generator))
        if is_plausible(trigger, max_mask_fraction=config.max_mask_fraction):
            stored[direction.key] = (trigger.mask, trigger.pattern)
        else:
            stored.pop(direction.key, None)
        triggers.append(trigger)
    return triggers


@pytest.mark.parametrize("batched", [True, False])
def test_flip_round_batches_its_plan_as_one_by_one_in_plan_order(client, batched):
    """A later round whose two pairs are (7, 2) and (2, 7), each inverted both ways: the plan
    repeats the directions 7->2 and 2->7, and their second inversion must warm-start from the
    first one's result, as one by one; the random draws must come in the same order. With
    ``batched_inversion=False`` the round is the one-by-one reference itself, bit for bit."""
    # Prepare
    model, x, y = client
    config = FlipConfig(
        num_classes=10,
        pairs_per_round=2,
        exploration=0.0,
        inversion_steps=40,
        warm_inversion_steps=15,
        samples_per_label=10,
        adversarial_training=False,
        batched_inversion=batched,
    )
    distances = np.full((10, 10), np.nan)
    distances[7, TARGET], distances[TARGET, 7] = 10.0, 20.0
    state = {DISTANCE_KEY: distances, "flip.participations": np.array([1])}
    generator, replay_generator = torch_generator(3), torch_generator(3)

    # Execute
    round_ = FlipHardening(config).start(model, x, y, server_round=2, state=state, generator=generator)
    held = sorted(int(label) for label in torch.unique(y).tolist())
    pairs = choose_pairs(
        ClassDistanceCache.from_state(state, 10),
        num_pairs=2,
        exploration=0.0,
        generator=replay_generator,
        source_labels=held,
    )
    expected = replay_one_by_one(config, model, x, y, round_.plan, state, replay_generator)

    # Assert
    assert pairs == [(7, TARGET), (TARGET, 7)]
    assert [direction.key for direction in round_.plan] == ["7.2", "2.7", "2.7", "7.2"]
    # The repeated directions did start warm: a first inversion left a plausible trigger.
    assert any(is_plausible(t, max_mask_fraction=config.max_mask_fraction) for t in expected[:2])
    assert round_.inversions == 4
    for trigger, reference in zip(round_.triggers, expected, strict=True):
        assert_agree(trigger, reference)
        if not batched:
            assert torch.equal(trigger.mask, reference.mask) and torch.equal(trigger.pattern, reference.pattern)
    assert torch.equal(generator.get_state(), replay_generator.get_state())


def test_a_round_reports_every_trigger_it_hardened_with_not_only_the_last(client):
    """A trigger found on the received (backdoored) model and gone from the local model after
    the round's training still counts: it was stamped. Here the local model is made constant
    (all weights zero: every input goes to label 0, the argmax of equal logits), so the
    re-inversion during training finds no trigger to any other label; the round must still
    report the target-2 trigger it started with."""
    # Prepare
    model, x, y = client
    local = copy.deepcopy(model)
    config = FlipConfig(num_classes=10, inversion_steps=60, warm_inversion_steps=15, reinvert_every=1)
    round_ = FlipHardening(config).start(local, x, y, server_round=1, state={}, generator=torch_generator(5))
    started_with = [t.target_label for t in round_.triggers if is_plausible(t, max_mask_fraction=0.125)]
    assert TARGET in started_with  # the backdoor's trigger was found on the received model

    # Execute: the local model forgets everything, then two batches re-invert on it
    with torch.no_grad():
        for parameter in local.parameters():
            parameter.zero_()
    for _ in range(2):
        round_.transform(x[:16], y[:16], torch_generator(6))

    # Assert
    diagnostics = round_.diagnostics()
    at_end = [t.target_label for t in round_.triggers if is_plausible(t, max_mask_fraction=0.125)]
    assert TARGET not in at_end and diagnostics["flip_triggers_at_end"] == len(at_end)
    assert diagnostics["flip_triggers"] >= len(started_with) > diagnostics["flip_triggers_at_end"]
    assert TARGET in [label for label, _ in round_.found_masks()]


@pytest.mark.parametrize("remember", [0, 2])
def test_a_remembered_trigger_keeps_hardening_after_the_backdoor_is_gone(client, remember):
    """``remember_participations``: a client that found the backdoor's trigger keeps stamping it
    in its next participations even when the model it receives no longer carries the backdoor
    (here: all weights zero), until the memory runs out; without memory it stops at once."""
    model, x, y = client
    config = FlipConfig(
        num_classes=10, inversion_steps=60, warm_inversion_steps=15, rewarmup_every=1, remember_participations=remember
    )
    hardening = FlipHardening(config)
    first = hardening.start(copy.deepcopy(model), x, y, server_round=1, state={}, generator=torch_generator(5))
    assert TARGET in [label for label, _ in first.found_masks()]
    clean = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in clean.parameters():
            parameter.zero_()

    state, targets_by_participation = first.new_state(), []
    for participation in range(3):
        round_ = hardening.start(clean, x, y, server_round=2 + participation, state=state, generator=torch_generator(6))
        targets_by_participation.append(TARGET in [label for label, _ in round_.found_masks()])
        state = round_.new_state()

    assert targets_by_participation == [participation < remember for participation in range(3)]
