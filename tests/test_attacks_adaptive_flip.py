"""AdaptiveFlipBackdoor: the Attack.prepare hook, counter-hardening batches, inversion on a
backdoored model, and FLIP's start_round."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from fedshield.attacks import (
    AdaptiveFlipBackdoor,
    AttackError,
    BackdoorAttack,
    LabelFlipAttack,
    NoAttack,
    counter_hardening_batch,
)
from fedshield.config import compose_config
from fedshield.flip import FlipConfig, FlipHardening
from fedshield.flip.hardening import hardening_transform
from fedshield.flip.inversion import InvertedTrigger, mask_mass_within
from fedshield.models import LogisticRegression
from fedshield.task.determinism import torch_generator
from helpers import backdoored_logistic

TARGET = 2


@pytest.fixture(scope="module")
def backdoored():
    """A logistic regression backdoored with the attack's own trigger, and 600 client samples."""
    attack = BackdoorAttack(num_malicious=1, target_label=TARGET, poison_per_batch=13)
    return backdoored_logistic(attack.training_transform(server_round=1))


def adaptive(**overrides) -> AdaptiveFlipBackdoor:
    settings = dict(num_malicious=1, target_label=TARGET, poison_per_batch=20, inversion_steps=150)
    return AdaptiveFlipBackdoor(**(settings | overrides))


def square_trigger(target: int, sources: tuple[int, ...]) -> InvertedTrigger:
    """A 2x2 white square in the bottom-right corner: a pair trigger for one source label."""
    mask = torch.zeros(1, 8, 8)
    mask[:, -2:, -2:] = 1.0
    return InvertedTrigger(
        mask=mask,
        pattern=torch.ones(1, 8, 8),
        mask_l1=4.0,
        attack_success=1.0,
        target_label=target,
        source_labels=sources,
        converged=True,
    )


# ------------------------------------------------------------------ the Attack.prepare hook


@pytest.mark.parametrize(
    "attack",
    [
        NoAttack(),
        BackdoorAttack(num_malicious=1, target_label=3),
        BackdoorAttack(num_malicious=1, schedule={"rounds": [4]}),
        LabelFlipAttack(num_malicious=1, num_classes=10),
    ],
    ids=["none", "backdoor", "single_shot_inactive", "label_flip"],
)
def test_default_prepare_is_training_transform_and_draws_nothing(attack):
    # Prepare
    model = LogisticRegression(input_shape=(1, 8, 8), num_classes=10)
    x, y = torch.rand(16, 1, 8, 8, generator=torch_generator(1)), torch.arange(16) % 10
    generator = torch_generator(7)
    # Execute
    prepared = attack.prepare(model, x, y, server_round=1, generator=generator)
    expected = attack.training_transform(server_round=1)
    # Assert
    assert (prepared is None) == (expected is None)
    if expected is not None:
        out_a = prepared(x, y, torch_generator(3))
        out_b = expected(x, y, torch_generator(3))
        assert all(torch.equal(a, b) for a, b in zip(out_a, out_b, strict=True))
    assert torch.equal(generator.get_state(), torch_generator(7).get_state())


# ------------------------------------------------------------------- counter-hardening batch


def test_counter_hardening_appends_target_labelled_copies_of_eligible_samples():
    # Prepare
    x = torch.rand(10, 1, 8, 8, generator=torch_generator(0)) * 0.5
    y = torch.tensor([0, 1, 2, 2, 3, 4, 5, 6, 7, 8])
    x_before, y_before = x.clone(), y.clone()
    universal = (0, 1, 3, 4, 5, 6, 7, 8)
    triggers = [square_trigger(TARGET, universal), square_trigger(TARGET, universal)]
    # Execute
    out_x, out_y = counter_hardening_batch(
        x, y, triggers=triggers, target_label=TARGET, num_stamped=5, generator=torch_generator(1)
    )
    # Assert
    assert torch.equal(out_x[:10], x) and torch.equal(out_y[:10], y)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert len(out_y) == 15 and bool((out_y[10:] == TARGET).all())
    stamped = out_x[10:]
    assert bool((stamped[:, :, -2:, -2:] == 1.0).all())  # the trigger region is set
    # Each copy is an untouched non-target sample outside the trigger region.
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[-2:, -2:] = False
    sources = [next(i for i in range(10) if torch.equal(x[i, :, outside], copy_[:, outside])) for copy_ in stamped]
    assert len(set(sources)) == 5 and all(int(y[i]) != TARGET for i in sources)


def test_counter_hardening_respects_pair_sources_and_caps_the_count():
    x, y = torch.zeros(6, 1, 8, 8), torch.tensor([2, 2, 5, 5, 7, 7])
    out_x, out_y = counter_hardening_batch(
        x,
        y,
        triggers=[square_trigger(TARGET, (5,))],
        target_label=TARGET,
        num_stamped=10,
        generator=torch_generator(0),
    )
    assert len(out_y) == 8  # only the two samples of label 5 may carry a 5 -> 2 trigger
    unchanged, _ = counter_hardening_batch(
        x,
        y,
        triggers=[square_trigger(TARGET, (4,))],
        target_label=TARGET,
        num_stamped=3,
        generator=torch_generator(0),
    )
    assert unchanged is x
    with pytest.raises(AttackError, match="at least one trigger"):
        counter_hardening_batch(x, y, triggers=[], target_label=TARGET, num_stamped=1, generator=torch_generator(0))


def test_counter_hardening_is_flips_hardening_batch_with_the_target_label():
    # The attacker predicts FLIP's batch exactly: same copies, same triggers, other label.
    triggers = [square_trigger(TARGET, (0, 1, 3, 4)), square_trigger(TARGET, (5,))]
    x = torch.rand(12, 1, 8, 8, generator=torch_generator(0))
    y = torch.tensor([0, 1, 2, 3, 4, 5, 5, 2, 1, 0, 6, 5])
    hard_x, hard_y = hardening_transform(triggers, stamped_share=0.5)(x, y, torch_generator(3))
    counter_x, counter_y = counter_hardening_batch(
        x, y, triggers=triggers, target_label=TARGET, num_stamped=6, generator=torch_generator(3)
    )
    assert len(counter_y) == len(hard_y) == 18
    assert torch.equal(counter_x, hard_x)
    assert torch.equal(counter_y[:12], y) and bool((counter_y[12:] == TARGET).all())
    assert not bool((hard_y[12:] == TARGET).any())


# ------------------------------------------------------------- the attack on a real backdoor


@pytest.mark.slow
def test_prepare_inverts_the_backdoor_and_counters_hardening(backdoored):
    # Prepare
    model, x, y = backdoored
    parameters = copy.deepcopy(model.state_dict())
    attack = adaptive(counter_share=0.25)
    # Execute
    triggers = attack.invert(model, x, y, generator=torch_generator(0))
    transform = attack.prepare(model, x, y, server_round=1, generator=torch_generator(0))
    batch_x, batch_y = x[:64], y[:64]
    out_x, out_y = transform(batch_x, batch_y, torch_generator(2))
    # Assert: the inverted trigger sits on the real one, and the batch carries both kinds.
    assert len(triggers) == 1 and triggers[0].target_label == TARGET
    real = attack.trigger.mask(28, 28)
    assert mask_mass_within(triggers[0], real) > 0.3
    assert len(out_y) == 64 + 16 and bool((out_y[64:] == TARGET).all())
    poisoned = (out_x[:64] != batch_x).flatten(1).any(dim=1)
    assert int(poisoned.sum()) <= 20 and bool((out_y[:64][poisoned] == TARGET).all())
    for name, value in model.state_dict().items():
        assert torch.equal(value, parameters[name])
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.slow
def test_prepare_falls_back_to_the_plain_backdoor(backdoored):
    model, x, y = backdoored
    plain = adaptive(counter_share=0.0).prepare(model, x, y, server_round=1, generator=torch_generator(0))
    expected = BackdoorAttack(num_malicious=1, target_label=TARGET).training_transform(server_round=1)
    out_a, out_b = plain(x[:64], y[:64], torch_generator(1)), expected(x[:64], y[:64], torch_generator(1))
    assert all(torch.equal(a, b) for a, b in zip(out_a, out_b, strict=True))
    inactive = adaptive(schedule={"rounds": [3]})
    assert inactive.prepare(model, x, y, server_round=2, generator=torch_generator(0)) is None
    # An untrained model has no small trigger to the target: nothing plausible to counter.
    fresh = LogisticRegression(input_shape=(1, 28, 28), num_classes=10)
    assert adaptive(inversion_steps=5).invert(fresh, x, y, generator=torch_generator(0)) == []


def test_settings_are_checked_and_follow_the_flip_config():
    with pytest.raises(AttackError, match="counter_share"):
        adaptive(counter_share=1.5)
    with pytest.raises(AttackError, match="inversion steps"):
        adaptive(inversion_steps=0)
    with pytest.raises(AttackError, match="max_mask_fraction"):
        adaptive(max_mask_fraction=0.0)
    with pytest.raises(AttackError, match="image"):
        adaptive().invert(
            LogisticRegression(input_shape=(4,), num_classes=10),
            torch.zeros(3, 4),
            torch.tensor([0, 1, 3]),
            generator=torch_generator(0),
        )
    cfg = compose_config(
        [
            "attack=adaptive_flip",
            "attack.num_malicious=1",
            "defense=flip",
            "defense.inversion_steps=7",
            "defense.max_mask_fraction=0.2",
        ]
    )
    attack = instantiate(cfg.attack, _convert_="all")
    assert attack.inversion.steps == 7 and attack.max_mask_fraction == pytest.approx(0.2)
    alone = instantiate(compose_config(["attack=adaptive_flip"]).attack, _convert_="all")
    assert alone.inversion.steps == 50


# ---------------------------------------------------------------------- FLIP's start_round


@pytest.mark.slow
def test_flip_does_nothing_before_its_start_round(backdoored):
    model, x, y = backdoored
    flip = FlipHardening(FlipConfig(num_classes=10, inversion_steps=5, start_round=3))
    generator = torch_generator(0)
    state = {"other.key": np.arange(2)}
    round_ = flip.start(model, x, y, server_round=2, state=state, generator=generator)
    transform, new_state = round_.transform, round_.new_state()
    assert transform is None and new_state.keys() == state.keys() and new_state is not state
    assert torch.equal(generator.get_state(), torch_generator(0).get_state())
    started = flip.start(model, x, y, server_round=3, state=state, generator=generator).new_state()
    assert started["flip.participations"].tolist() == [1]
    with pytest.raises(ValueError, match="start_round"):
        FlipConfig(num_classes=10, start_round=0)
