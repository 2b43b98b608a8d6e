"""Backdoor attacks: the trigger, batch poisoning, boosting, DBA, attack success, real training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedshield.attacks import (
    AdaptiveFlipBackdoor,
    AttackError,
    BackdoorAttack,
    DistributedBackdoorAttack,
    LabelFlipAttack,
    PixelPatternTrigger,
    Schedule,
    attack_success_rate,
    poison_batch,
)
from fedshield.attacks.text_backdoor import TextBackdoorAttack
from fedshield.data import load_dataset
from fedshield.models import MnistCNN
from fedshield.task import metrics
from fedshield.task.metrics import MetricError
from fedshield.task.training import LocalTrainingConfig, local_train, predict_logits

# ---------------------------------------------------------------------------------- trigger


def test_stamp_sets_exactly_the_checker_pixels_in_the_bottom_right_corner():
    # Prepare
    images = torch.rand(4, 3, 10, 12, generator=torch.Generator().manual_seed(0)) * 0.5
    trigger = PixelPatternTrigger(pattern="checker", size=3, corner="bottom_right", margin=1)
    # Execute
    stamped = trigger.stamp(images)
    # Assert: the 3x3 box occupies rows 6..8 and columns 8..10; on-pixels have even i + j.
    expected = torch.zeros(10, 12, dtype=torch.bool)
    for i in range(3):
        for j in range(3):
            expected[6 + i, 8 + j] = (i + j) % 2 == 0
    changed = stamped != images
    assert torch.equal(changed.any(dim=(0, 1)), expected)
    assert bool((stamped[..., expected] == 1.0).all())
    torch.testing.assert_close(stamped[..., ~expected], images[..., ~expected])
    assert images.max() <= 0.5  # the input is not modified


@pytest.mark.parametrize(
    ("corner", "top", "left"),
    [("top_left", 2, 2), ("top_right", 2, 22), ("bottom_left", 22, 2), ("bottom_right", 22, 22)],
)
def test_trigger_corner_and_margin(corner, top, left):
    mask = PixelPatternTrigger(pattern="square", size=4, corner=corner, margin=2).mask(28, 28)
    expected = torch.zeros(28, 28, dtype=torch.bool)
    expected[top : top + 4, left : left + 4] = True
    assert torch.equal(mask, expected)


def test_explicit_pattern_and_errors():
    trigger = PixelPatternTrigger(pattern=[[1, 0], [0, 1]], corner="top_left", margin=0, value=0.7)
    stamped = trigger.stamp(torch.zeros(1, 1, 5, 5))
    assert stamped[0, 0, 0, 0] == pytest.approx(0.7) and stamped[0, 0, 1, 1] == pytest.approx(0.7)
    assert float(stamped.sum()) == pytest.approx(1.4)
    with pytest.raises(AttackError, match="trigger.corner"):
        PixelPatternTrigger(corner="middle")
    with pytest.raises(AttackError, match="does not fit"):
        PixelPatternTrigger(size=5, margin=1).stamp(torch.zeros(1, 1, 4, 4))


# -------------------------------------------------------------------------- batch poisoning


def test_training_transform_poisons_exactly_poison_per_batch_samples():
    # Prepare
    attack = BackdoorAttack(num_malicious=1, target_label=2, poison_per_batch=20)
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(64, 1, 28, 28, generator=generator) * 0.5
    y = torch.randint(0, 10, (64,), generator=generator)
    transform = attack.training_transform(server_round=1)
    # Execute
    poisoned_x, poisoned_y = transform(x, y, torch.Generator().manual_seed(9))
    # Assert
    changed = (poisoned_x != x).flatten(1).any(dim=1)
    assert int(changed.sum()) == 20
    torch.testing.assert_close(poisoned_x[changed], attack.stamp(x[changed]))
    assert bool((poisoned_y[changed] == 2).all())
    assert torch.equal(poisoned_y[~changed], y[~changed])
    torch.testing.assert_close(poisoned_x[~changed], x[~changed])
    # The choice is a pure function of the generator.
    again_x, _ = transform(x, y, torch.Generator().manual_seed(9))
    assert torch.equal(again_x, poisoned_x)


def test_poison_batch_smaller_than_poison_per_batch_poisons_everything():
    x, y = torch.zeros(5, 1, 8, 8), torch.arange(5)
    poisoned_x, poisoned_y = poison_batch(
        x, y, trigger=PixelPatternTrigger(), target_label=0, num_poisoned=20, generator=torch.Generator()
    )
    assert torch.equal(poisoned_y, torch.zeros(5, dtype=torch.long))
    assert bool((poisoned_x.flatten(1).sum(dim=1) == 5).all())  # 5 checker pixels each


def test_label_flip_transform():
    attack = LabelFlipAttack(num_malicious=1, num_classes=10)
    x, y = torch.zeros(4, 2), torch.tensor([0, 3, 9, 5])
    _, flipped = attack.training_transform(server_round=1)(x, y, torch.Generator())
    assert torch.equal(flipped, torch.tensor([9, 6, 0, 4]))


# ------------------------------------------------------------------ schedule and boosting


def test_single_shot_versus_continuous_schedule():
    single = BackdoorAttack(num_malicious=2, schedule={"rounds": [5]}, scale=100.0)
    continuous = BackdoorAttack(num_malicious=2, schedule=Schedule(start_round=3, end_round=6))
    update = torch.ones(3)
    for server_round in range(1, 9):
        assert (single.training_transform(server_round=server_round) is not None) == (server_round == 5)
        assert (continuous.training_transform(server_round=server_round) is not None) == (3 <= server_round <= 6)
    torch.testing.assert_close(single.post_process(update, server_round=5, num_sampled=10), 100.0 * update)
    torch.testing.assert_close(single.post_process(update, server_round=4, num_sampled=10), update)


def test_model_replacement_boost_is_n_over_eta():
    attack = BackdoorAttack(num_malicious=1, scale=None, server_learning_rate=0.5)
    boosted = attack.post_process(torch.ones(2), server_round=1, num_sampled=10)
    torch.testing.assert_close(boosted, torch.full((2,), 20.0))


def test_no_malicious_clients_means_no_poisoning():
    assert BackdoorAttack(num_malicious=0).training_transform(server_round=1) is None


# -------------------------------------------------------------------------------------- DBA


def test_dba_parts_partition_the_global_trigger_and_ranks_cycle():
    # Prepare
    attack = DistributedBackdoorAttack(num_malicious=6, num_parts=4)
    malicious_ids = [40, 3, 17, 8, 25, 31]  # sorted: 3, 8, 17, 25, 31, 40
    # Execute
    masks = [part.mask(28, 28) for part in attack.local_triggers]
    client_triggers = {uid: attack.for_client(uid, malicious_ids).trigger for uid in malicious_ids}
    # Assert: disjoint 1x4 stripes whose union is the global 4x4 square.
    union = torch.zeros(28, 28, dtype=torch.bool)
    for mask in masks:
        assert int(mask.sum()) == 4 and not bool((union & mask).any())
        union |= mask
    assert torch.equal(union, attack.trigger.mask(28, 28))
    expected_part = {3: 0, 8: 1, 17: 2, 25: 3, 31: 0, 40: 1}
    for uid, part in expected_part.items():
        assert client_triggers[uid] == attack.local_triggers[part]
    # The server's stamp is the full trigger; a client trains with its part only.
    images = torch.zeros(2, 1, 28, 28)
    assert int((attack.stamp(images) > 0).sum()) == 2 * 16
    local = attack.for_client(8, malicious_ids)
    poisoned_x, _ = local.training_transform(server_round=1)(images, torch.ones(2).long(), torch.Generator())
    assert torch.equal((poisoned_x > 0).any(dim=(0, 1)), masks[1])


def test_dba_clients_train_with_the_attacks_own_budget():
    # The attacker's SGD budget must reach each DBA client, as it does a plain backdoor client.
    attack = DistributedBackdoorAttack(
        num_malicious=2,
        local_steps=7,
        learning_rate=0.3,
        scale=5.0,
        schedule={"rounds": [2]},
        target_label=3,
        poison_per_batch=9,
    )
    honest = LocalTrainingConfig(local_steps=2, batch_size=16, learning_rate=0.01)
    for uid in (4, 9):
        local = attack.for_client(uid, [4, 9])
        training = local.training_config(honest)
        assert (training.local_steps, training.learning_rate) == (7, 0.3)
        assert training.batch_size == 16
        assert local.target_label == 3 and local.schedule == attack.schedule
        torch.testing.assert_close(
            local.post_process(torch.ones(2), server_round=2, num_sampled=4), torch.full((2,), 5.0)
        )
        x, y = torch.zeros(12, 1, 28, 28), torch.zeros(12, dtype=torch.long)
        poisoned_x, poisoned_y = local.training_transform(server_round=2)(x, y, torch.Generator())
        assert int((poisoned_x != x).flatten(1).any(dim=1).sum()) == 9 and int((poisoned_y == 3).sum()) == 9


def test_backdoor_parameters_are_checked_by_name_for_every_backdoor():
    vocabulary = {"<pad>": 0, "<unk>": 1, "pasta": 2, "from": 3, "astoria": 4, "is": 5, "delicious": 6}
    builders = [
        BackdoorAttack,
        DistributedBackdoorAttack,
        AdaptiveFlipBackdoor,
        lambda **kw: TextBackdoorAttack(vocabulary=vocabulary, **kw),
    ]
    bad = [
        ("num_malicious", -1),
        ("poison_per_batch", 0),
        ("scale", 0.0),
        ("server_learning_rate", float("inf")),
        ("local_steps", 0),
        ("learning_rate", -0.1),
    ]
    for build in builders:
        for field, value in bad:
            with pytest.raises(AttackError, match=f"attack.{field}"):
                build(**{field: value})
        with pytest.raises(AttackError, match=r"unknown attack parameters \['poison_rate'\]"):
            build(poison_rate=0.2)
    with pytest.raises(AttackError, match="attack.target_label"):
        BackdoorAttack(target_label=-1)
    with pytest.raises(AttackError, match="target_word"):
        TextBackdoorAttack(vocabulary=vocabulary, target_label=3)


def test_every_backdoor_trains_with_the_attackers_budget_and_boost():
    vocabulary = {"<pad>": 0, "<unk>": 1, "pasta": 2, "from": 3, "astoria": 4, "is": 5, "delicious": 6}
    honest = LocalTrainingConfig(local_steps=2, batch_size=16, learning_rate=0.01)
    budget = dict(num_malicious=1, local_steps=7, learning_rate=0.3, scale=None, server_learning_rate=0.5)
    for attack in (
        BackdoorAttack(**budget),
        AdaptiveFlipBackdoor(**budget),
        TextBackdoorAttack(vocabulary=vocabulary, **budget),
    ):
        training = attack.training_config(honest)
        assert (training.local_steps, training.learning_rate, training.batch_size) == (7, 0.3, 16)
        torch.testing.assert_close(
            attack.post_process(torch.ones(2), server_round=1, num_sampled=4), torch.full((2,), 8.0)
        )
    # Unset, the attacker trains as the honest clients do.
    assert BackdoorAttack(num_malicious=1).training_config(honest) is honest
    assert LabelFlipAttack(num_malicious=1, num_classes=10).training_config(honest) is honest


def test_dba_needs_for_client_and_a_known_client():
    attack = DistributedBackdoorAttack(num_malicious=2)
    with pytest.raises(RuntimeError, match="for_client"):
        attack.training_transform(server_round=1)
    with pytest.raises(AttackError, match="malicious_ids"):
        attack.for_client(7, [1, 2])


# --------------------------------------------------------------------- attack success rate


def test_attack_success_rate_excludes_inputs_of_the_target_label():
    true_labels = np.array([0, 0, 1, 2, 3, 4])
    predictions = np.array([0, 5, 0, 0, 3, 0])
    # Non-target inputs: labels 1, 2, 3, 4 -> predicted 0, 0, 3, 0: 3 of 4.
    assert attack_success_rate(predictions, true_labels, target_label=0) == pytest.approx(0.75)
    logits = torch.nn.functional.one_hot(torch.from_numpy(predictions), 6).float()
    assert attack_success_rate(logits, torch.from_numpy(true_labels), target_label=0) == pytest.approx(0.75)
    with pytest.raises(MetricError, match="target_label"):
        attack_success_rate(np.array([0, 0]), np.array([0, 0]), target_label=0)
    with pytest.raises(MetricError, match="shape"):
        attack_success_rate(np.array([0, 1, 2]), np.array([1, 2]), target_label=0)


def test_attacks_export_the_task_metric():
    # One implementation: the attacks' name is the metric the server's evaluation uses.
    assert attack_success_rate is metrics.attack_success_rate


# ---------------------------------------------------------------------- real local training


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_local_training_with_the_backdoor_transform_learns_the_backdoor(one_thread):
    # Prepare: one client on MNIST-5k, 150 SGD steps of 64 with 20 poisoned per batch.
    train, test = load_dataset("mnist5k")
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    test_x, test_y = torch.from_numpy(test.x), torch.from_numpy(test.y)
    attack = BackdoorAttack(num_malicious=1, target_label=0, poison_per_batch=20)
    config = LocalTrainingConfig(local_steps=150, batch_size=64, learning_rate=0.05, momentum=0.9)

    def trained(transform):
        torch.manual_seed(0)
        model = MnistCNN(input_shape=(1, 28, 28), num_classes=10)
        local_train(model, x, y, config=config, generator=torch.Generator().manual_seed(0), batch_transform=transform)
        return model

    # Execute
    poisoned = trained(attack.training_transform(server_round=1))
    clean = trained(None)

    # Assert
    def success(model):
        return attack_success_rate(predict_logits(model, attack.stamp(test_x)), test_y, target_label=0)

    accuracy = float((predict_logits(poisoned, test_x).argmax(dim=1) == test_y).float().mean())
    assert success(poisoned) > 0.8
    assert accuracy > 0.85
    assert success(clean) < 0.2


def test_trigger_at_an_explicit_offset_sets_exactly_its_pixels():
    trigger = PixelPatternTrigger(pattern="plus", size=3, offset=[10, 4])
    mask = trigger.mask(28, 28)
    expected = torch.zeros((28, 28), dtype=torch.bool)
    expected[10:13, 5] = True
    expected[11, 4:7] = True
    assert torch.equal(mask, expected)
    stamped = trigger.stamp(torch.zeros(2, 1, 28, 28))
    assert torch.equal(stamped[0, 0] == 1.0, expected)
    assert all(part.offset == (10, 4) for part in trigger.split(2))
    with pytest.raises(AttackError, match="offset"):
        PixelPatternTrigger(pattern="square", size=4, offset=[26, 0]).mask(28, 28)
    with pytest.raises(AttackError, match="offset"):
        PixelPatternTrigger(offset=[1, 2, 3])
