"""Neural Cleanse inversion on a planted backdoor, and FLIP hardening that unlearns it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedshield.data import load_dataset
from fedshield.flip.hardening import hardening_transform
from fedshield.flip.inversion import (
    CostSchedule,
    InversionConfig,
    InvertedTrigger,
    TriggerInversionError,
    blend,
    invert_pair,
    invert_trigger,
    invert_universal,
    is_plausible,
    mask_mass_within,
    stamp_inverted,
)
from fedshield.models import MnistCNN
from fedshield.task.determinism import torch_generator
from fedshield.task.training import LocalTrainingConfig, local_train, predict_logits

TARGET = 2
SQUARE = 4  # planted trigger: a white 4 x 4 square in the bottom-right corner


def stamp_square(x: torch.Tensor) -> torch.Tensor:
    stamped = x.clone()
    stamped[:, :, -SQUARE:, -SQUARE:] = 1.0
    return stamped


def square_region(*, dilation: int) -> np.ndarray:
    region = np.zeros((28, 28), dtype=bool)
    region[28 - SQUARE - dilation :, 28 - SQUARE - dilation :] = True
    return region


def accuracy_and_asr(model, x_test, y_test) -> tuple[float, float]:
    clean = float((predict_logits(model, x_test).argmax(1) == y_test).double().mean())
    keep = y_test != TARGET
    stamped = predict_logits(model, stamp_square(x_test[keep])).argmax(1)
    return clean, float((stamped == TARGET).double().mean())


@pytest.fixture(scope="module")
def backdoored():
    """A tiny CNN trained on mnist5k with 20% of every batch stamped and labelled 2."""
    torch.set_num_threads(1)
    train, test = load_dataset("mnist5k")
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    x_test, y_test = torch.from_numpy(test.x), torch.from_numpy(test.y)
    torch.manual_seed(0)
    model = MnistCNN(channels=(8, 16), hidden=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch_generator(0)
    for _ in range(300):
        index = torch.randint(len(y), (64,), generator=generator)
        batch_x, batch_y = x[index].clone(), y[index].clone()
        poisoned = 13  # 20% of the batch
        batch_x[:poisoned], batch_y[:poisoned] = stamp_square(batch_x[:poisoned]), TARGET
        optimizer.zero_grad()
        F.cross_entropy(model(batch_x), batch_y).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    return model, x, y, x_test, y_test


def other_label_samples(x, y, *, target: int, count: int = 200) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``count`` random samples of every label but ``target`` (mnist5k is sorted by label)."""
    others = torch.nonzero(y != target).flatten()
    index = others[torch.randperm(len(others), generator=torch_generator(target))[:count]]
    return x[index], tuple(sorted(set(y[index].tolist())))


@pytest.mark.slow
def test_planted_backdoor_is_effective(backdoored):
    model, _, _, x_test, y_test = backdoored
    accuracy, asr = accuracy_and_asr(model, x_test, y_test)
    assert accuracy > 0.85
    assert asr > 0.95


@pytest.mark.slow
def test_inversion_recovers_the_planted_square(backdoored):
    # Prepare
    model, x, y, _, _ = backdoored
    parameters_before = [p.detach().clone() for p in model.parameters()]
    model.train()  # the inversion must run in eval mode and hand the mode back

    # Execute
    results = {}
    for target in (TARGET, 0):
        x_source, labels = other_label_samples(x, y, target=target)
        results[target] = invert_trigger(
            model,
            x_source,
            target_label=target,
            steps=300,
            learning_rate=0.1,
            initial_cost=1e-3,
            generator=torch_generator(1),
            source_labels=labels,
        )

    # Assert
    backdoor, clean = results[TARGET], results[0]
    assert backdoor.converged and backdoor.attack_success >= 0.9
    assert mask_mass_within(backdoor, square_region(dilation=2)) > 0.5
    assert backdoor.mask_l1 < clean.mask_l1
    assert model.training and all(module.training for module in model.modules())
    for before, after in zip(parameters_before, model.parameters(), strict=True):
        assert torch.equal(before, after) and after.grad is None
    model.eval()


@pytest.mark.slow
def test_hardening_unlearns_the_backdoor(backdoored):
    # Prepare: FLIP's loop on one benign client, two participations of invert-then-harden.
    model, x, y, x_test, y_test = backdoored
    accuracy_before, asr_before = accuracy_and_asr(model, x_test, y_test)
    training = LocalTrainingConfig(local_steps=50, batch_size=64, learning_rate=0.05)
    hardened, control = copy.deepcopy(model), copy.deepcopy(model)

    # Execute
    sizes = []
    for participation in range(2):
        trigger = invert_universal(
            hardened,
            x,
            y,
            target=TARGET,
            generator=torch_generator(10 + participation),
            config=InversionConfig(steps=300),
            samples_per_label=10,
        )
        sizes.append(trigger.mask_l1)
        transform = hardening_transform([trigger], stamped_share=0.5)
        local_train(
            hardened,
            x,
            y,
            config=training,
            generator=torch_generator(participation),
            batch_transform=transform,
        )
        local_train(control, x, y, config=training, generator=torch_generator(participation))

    # Assert
    accuracy_after, asr_after = accuracy_and_asr(hardened, x_test, y_test)
    _, asr_control = accuracy_and_asr(control, x_test, y_test)
    assert asr_after <= asr_before / 2
    assert accuracy_after >= accuracy_before - 0.03
    assert asr_control > 0.9  # the same training without the stamped copies keeps the backdoor
    assert sizes[1] > sizes[0]  # after hardening, the target is farther from the other labels


@pytest.mark.slow
def test_pair_inversion_is_symmetric_only_with_enough_samples_of_both_labels(backdoored):
    model, x, y, _, _ = backdoored
    config = InversionConfig(steps=5)
    both = torch.cat([torch.nonzero(y == 3).flatten()[:6], torch.nonzero(y == 5).flatten()[:6]])
    few_targets = torch.cat([torch.nonzero(y == 3).flatten()[:6], torch.nonzero(y == 5).flatten()[:5]])

    symmetric = invert_pair(model, x[both], y[both], source=3, target=5, generator=torch_generator(0), config=config)
    asymmetric = invert_pair(
        model,
        x[few_targets],
        y[few_targets],
        source=3,
        target=5,
        generator=torch_generator(0),
        config=config,
    )

    assert [(t.source_label, t.target_label) for t in symmetric] == [(3, 5), (5, 3)]
    assert [(t.source_label, t.target_label) for t in asymmetric] == [(3, 5)]


@pytest.mark.slow
def test_inversion_is_deterministic_given_the_generator(backdoored):
    model, x, y, _, _ = backdoored
    x_source, labels = other_label_samples(x, y, target=TARGET, count=40)
    first, second = (
        invert_trigger(
            model,
            x_source,
            target_label=TARGET,
            steps=20,
            learning_rate=0.1,
            initial_cost=1e-3,
            generator=torch_generator(7),
            source_labels=labels,
        )
        for _ in range(2)
    )
    torch.testing.assert_close(first.mask, second.mask, rtol=0, atol=0)
    torch.testing.assert_close(first.pattern, second.pattern, rtol=0, atol=0)


def make_trigger(*, mask_l1_pixels: int, converged: bool = True) -> InvertedTrigger:
    mask = torch.zeros(1, 28, 28)
    mask.view(-1)[:mask_l1_pixels] = 1.0
    return InvertedTrigger(
        mask=mask,
        pattern=torch.full((1, 28, 28), 0.5),
        mask_l1=float(mask_l1_pixels),
        attack_success=1.0 if converged else 0.5,
        target_label=1,
        source_labels=(0,),
        converged=converged,
    )


def test_stamp_blends_mask_and_pattern():
    trigger = make_trigger(mask_l1_pixels=28)  # the first row
    x = torch.zeros(2, 1, 28, 28)
    stamped = stamp_inverted(x, trigger)
    assert torch.all(stamped[:, :, 0, :] == 0.5)
    assert torch.all(stamped[:, :, 1:, :] == 0.0)


def test_blend_broadcasts_one_trigger_or_one_per_sample():
    x = torch.rand(3, 2, 4, 4, generator=torch_generator(0))
    mask = torch.rand(1, 4, 4, generator=torch_generator(1))
    pattern = torch.rand(2, 4, 4, generator=torch_generator(2))
    one = blend(x, mask, pattern)
    each = blend(x, mask.expand(3, 1, 4, 4), pattern.expand(3, 2, 4, 4))
    assert torch.equal(one, each)
    torch.testing.assert_close(one[1, 0], (1 - mask[0]) * x[1, 0] + mask[0] * pattern[0])
    assert torch.equal(blend(x, torch.zeros(1, 4, 4), pattern), x)
    assert torch.equal(blend(x, torch.ones(1, 4, 4), pattern), pattern.expand_as(x))


def test_cost_schedule_follows_neural_cleanse():
    schedule = CostSchedule(initial_cost=1e-3, patience=2, multiplier=1.5)
    costs = []
    for succeeded in [True, True, True, False, False, False, True, False, False]:
        schedule.update(succeeded=succeeded)
        costs.append(schedule.cost)
        if len(costs) == 2:
            assert schedule.raised and not schedule.explored_both_ways
    # Two successes raise by 1.5; a failure restarts the count; two failures lower by 1.5 ** 1.5.
    up, down = 1e-3 * 1.5, 1e-3 * 1.5 / 1.5**1.5
    assert costs == pytest.approx([1e-3, up, up, up, down, down, down, down, down / 1.5**1.5])
    assert schedule.explored_both_ways
    lowered = CostSchedule(initial_cost=0.5, patience=1, multiplier=2.0)
    lowered.update(succeeded=False)
    lowered.update(succeeded=True)
    assert lowered.cost == pytest.approx(0.5 / 2**1.5 * 2)


@pytest.mark.parametrize(
    ("pixels", "converged", "expected"),
    [(98, True, True), (99, True, False), (10, False, False)],  # 98 = 784 / 8
)
def test_is_plausible_caps_the_mask_size(pixels, converged, expected):
    trigger = make_trigger(mask_l1_pixels=pixels, converged=converged)
    assert is_plausible(trigger, max_mask_fraction=1 / 8) is expected


def test_bad_inversion_settings_are_rejected():
    model = MnistCNN(channels=(2, 2), hidden=4)
    with pytest.raises(TriggerInversionError, match="steps"):
        invert_trigger(
            model,
            torch.zeros(1, 1, 28, 28),
            target_label=0,
            steps=0,
            learning_rate=0.1,
            initial_cost=1e-3,
            generator=torch_generator(0),
        )
    with pytest.raises(TriggerInversionError, match="images"):
        invert_trigger(
            model,
            torch.zeros(3, 784),
            target_label=0,
            steps=1,
            learning_rate=0.1,
            initial_cost=1e-3,
            generator=torch_generator(0),
        )
    with pytest.raises(ValueError, match="max_mask_fraction"):
        is_plausible(make_trigger(mask_l1_pixels=1), max_mask_fraction=0.0)
