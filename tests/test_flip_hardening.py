"""The hardening batch transform: stamped copies with their true labels, seeded draws."""

from __future__ import annotations

import pytest
import torch

from fedshield.flip.hardening import HardeningError, eligibility, hardening_transform, stamp_eligible
from fedshield.flip.inversion import InvertedTrigger
from fedshield.task.determinism import torch_generator


def corner_trigger(*, source_labels: tuple[int, ...], target: int, value: float) -> InvertedTrigger:
    mask = torch.zeros(1, 6, 6)
    mask[0, -2:, -2:] = 1.0
    return InvertedTrigger(
        mask=mask,
        pattern=torch.full((1, 6, 6), value),
        mask_l1=4.0,
        attack_success=1.0,
        target_label=target,
        source_labels=source_labels,
        converged=True,
    )


def test_eligibility_follows_source_and_target_labels():
    pair = corner_trigger(source_labels=(0,), target=1, value=1.0)
    universal = corner_trigger(source_labels=(0, 2), target=1, value=0.5)
    labels = torch.tensor([0, 1, 2])
    expected = torch.tensor([[True, True], [False, False], [False, True]])
    assert torch.equal(eligibility([pair, universal], labels), expected)


def test_stamped_copies_keep_true_labels_and_the_clean_batch_is_untouched():
    # Prepare
    triggers = [
        corner_trigger(source_labels=(0,), target=1, value=1.0),
        corner_trigger(source_labels=(2,), target=1, value=0.5),
    ]
    x = torch.zeros(8, 1, 6, 6)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    transform = hardening_transform(triggers, stamped_share=0.5)

    # Execute
    out_x, out_y = transform(x, y, torch_generator(0))

    # Assert
    assert torch.equal(out_x[:8], x) and torch.equal(out_y[:8], y)
    copies_x, copies_y = out_x[8:], out_y[8:]
    assert len(copies_y) == 4  # 0.5 * 8, and 5 samples are eligible
    assert not torch.any(copies_y == 1)  # a target-label sample is never stamped
    corner = copies_x[:, 0, -2:, -2:].flatten(1)
    for label, corner_values in zip(copies_y.tolist(), corner, strict=True):
        expected = 1.0 if label == 0 else 0.5  # each sample carries the trigger of its label
        assert torch.all(corner_values == expected)
    assert torch.all(copies_x[:, 0, :-2, :] == 0)


def test_transform_is_deterministic_and_stops_at_the_eligible_samples():
    transform = hardening_transform([corner_trigger(source_labels=(0,), target=1, value=1.0)], stamped_share=1.0)
    x = torch.rand(6, 1, 6, 6, generator=torch_generator(3))
    y = torch.tensor([0, 1, 1, 0, 1, 1])
    first = transform(x, y, torch_generator(5))
    second = transform(x, y, torch_generator(5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert len(first[1]) == 6 + 2  # only the two samples of label 0 may carry the trigger


def test_batch_without_eligible_samples_is_returned_unchanged():
    transform = hardening_transform([corner_trigger(source_labels=(0,), target=1, value=1.0)], stamped_share=0.5)
    x, y = torch.zeros(3, 1, 6, 6), torch.tensor([1, 2, 2])
    out_x, out_y = transform(x, y, torch_generator(0))
    assert out_x is x and out_y is y


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_stamped_share_out_of_range_is_rejected(share):
    with pytest.raises(HardeningError, match="stamped_share"):
        hardening_transform([corner_trigger(source_labels=(0,), target=1, value=1.0)], stamped_share=share)


def test_no_triggers_is_rejected():
    with pytest.raises(ValueError, match="at least one trigger"):
        hardening_transform([], stamped_share=0.5)


def test_stamp_eligible_draws_the_permutation_then_the_trigger_scores():
    # Prepare: two universal triggers, so that each chosen sample draws between them.
    triggers = [
        corner_trigger(source_labels=(0, 2), target=1, value=1.0),
        corner_trigger(source_labels=(0, 2), target=1, value=0.5),
    ]
    x = torch.rand(7, 1, 6, 6, generator=torch_generator(1))
    y = torch.tensor([0, 1, 2, 2, 1, 0, 2])
    generator = torch_generator(4)
    # Execute
    chosen, stamped = stamp_eligible(x, y, triggers, count=3, generator=generator)
    # Assert: the same draws by hand, in this order, and the blend of the drawn trigger.
    replay = torch_generator(4)
    candidates = torch.tensor([0, 2, 3, 5, 6])
    expected = candidates[torch.randperm(5, generator=replay)[:3]]
    which = torch.rand((3, 2), generator=replay).argmax(dim=1)
    assert torch.equal(chosen, expected)
    assert torch.equal(generator.get_state(), replay.get_state())
    for copy_, index, trigger in zip(stamped, chosen, which, strict=True):
        value = triggers[int(trigger)].pattern[0, 0, 0]
        assert torch.all(copy_[0, -2:, -2:] == value)
        assert torch.equal(copy_[0, :-2, :], x[index, 0, :-2, :])


def test_stamp_eligible_without_candidates_draws_nothing():
    generator = torch_generator(0)
    x, y = torch.zeros(3, 1, 6, 6), torch.tensor([1, 1, 1])
    chosen, stamped = stamp_eligible(
        x, y, [corner_trigger(source_labels=(0,), target=1, value=1.0)], count=2, generator=generator
    )
    assert len(chosen) == 0 and stamped.shape == (0, 1, 6, 6)
    assert torch.equal(generator.get_state(), torch_generator(0).get_state())
    with pytest.raises(HardeningError, match="at least one trigger"):
        stamp_eligible(x, y, [], count=1, generator=generator)
