"""FLIP's Theorem 1 setting: exact bounds on the loss change of a logistic regression."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from fedshield.data import load_dataset
from fedshield.flip.hardening import hardening_transform
from fedshield.flip.inversion import InversionConfig, invert_universal
from fedshield.flip.theory import TheoryInputError, loss_change_bounds
from fedshield.models import LogisticRegression
from fedshield.models.params import get_flat_params, set_flat_params
from fedshield.task.determinism import torch_generator
from fedshield.task.training import LocalTrainingConfig, local_train

MNIST_ROOT = Path("/work/shared/data/mnist")
TARGET = 2
SLACK = 1e-5


def stamp_square(x: torch.Tensor) -> torch.Tensor:
    stamped = x.clone()
    stamped[:, :, -4:, -4:] = 1.0
    return stamped


def poisoning(share: float):
    def transform(x, y, generator):
        count = int(share * len(y))
        x, y = x.clone(), y.clone()
        x[:count], y[:count] = stamp_square(x[:count]), TARGET
        return x, y

    return transform


def test_bounds_hold_for_random_large_weight_changes():
    generator = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 30.0):
        x = torch.randn(200, 7, generator=generator, dtype=torch.float64)
        weight = torch.randn(5, 7, generator=generator, dtype=torch.float64)
        change = scale * torch.randn(5, 7, generator=generator, dtype=torch.float64)
        bias_change = scale * torch.randn(5, generator=generator, dtype=torch.float64)
        labels = torch.randint(5, (200,), generator=generator)
        lower, actual, upper = loss_change_bounds(
            x, weight=weight, weight_change=change, labels=labels, bias_change=bias_change
        )
        assert np.all(lower <= actual + 1e-9) and np.all(actual <= upper + 1e-9)


def test_linearised_bound_is_the_exact_change_for_tiny_steps():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=generator, dtype=torch.float64)
    weight = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    change = 1e-6 * torch.randn(3, 4, generator=generator, dtype=torch.float64)
    lower, actual, _ = loss_change_bounds(
        x, weight=weight, weight_change=change, labels=torch.zeros(50, dtype=torch.long)
    )
    np.testing.assert_allclose(actual, lower, rtol=1e-4, atol=1e-15)


def test_the_q_weighted_form_is_not_a_bound_for_one_label():
    # Uniform q over L = 10 labels, dz = -M e_g: the loss of g rises by about (1 - 1/L) M,
    # above "max_t dz_t - q . dz" = M / L, while the exact bounds hold.
    num_labels, size = 10, 5.0
    x = np.ones((1, 1))
    change = np.zeros((num_labels, 1))
    change[0, 0] = -size
    lower, actual, upper = loss_change_bounds(
        x, weight=np.zeros((num_labels, 1)), weight_change=change, labels=np.array([0])
    )
    quoted_upper = change.max() - change.mean()
    assert actual[0] > quoted_upper + 1.0
    assert lower[0] <= actual[0] <= upper[0]


@pytest.mark.slow  # FedAvg rounds of local_train on real MNIST
@pytest.mark.skipif(not MNIST_ROOT.is_dir(), reason="real MNIST not available")
def test_bounds_hold_on_real_mnist_after_fedavg_with_and_without_hardening():
    # Prepare: one benign and one malicious client on the real MNIST 10k split, FedAvg of LR.
    torch.set_num_threads(1)
    train, test = load_dataset("mnist", root=MNIST_ROOT)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    benign, malicious = slice(0, 4000), slice(4000, 8000)
    torch.manual_seed(0)
    model = LogisticRegression(input_shape=(1, 28, 28), num_classes=10)
    training = LocalTrainingConfig(local_steps=5, batch_size=64, learning_rate=0.5)

    def client_params(start, *, transform, seed, data):
        local = copy.deepcopy(model)
        set_flat_params(local, start)
        local_train(
            local,
            x[data],
            y[data],
            config=training,
            generator=torch_generator(seed),
            batch_transform=transform,
        )
        return get_flat_params(local)

    for round_index in range(3):  # a few rounds so that the global model carries the backdoor
        start = get_flat_params(model)
        benign_params = client_params(start, transform=None, seed=round_index, data=benign)
        malicious_params = client_params(start, transform=poisoning(0.5), seed=100 + round_index, data=malicious)
        set_flat_params(model, (benign_params + malicious_params) / 2)

    # Execute: the last round with and without hardening on the benign client.
    start = get_flat_params(model)
    trigger = invert_universal(
        model,
        x[benign],
        y[benign],
        target=TARGET,
        generator=torch_generator(7),
        config=InversionConfig(steps=200),
        samples_per_label=10,
    )
    malicious_params = client_params(start, transform=poisoning(0.5), seed=200, data=malicious)
    plain = (client_params(start, transform=None, seed=300, data=benign) + malicious_params) / 2
    hardened_transform = hardening_transform([trigger], stamped_share=0.5)
    hardened = (client_params(start, transform=hardened_transform, seed=300, data=benign) + malicious_params) / 2
    without, with_hardening = copy.deepcopy(model), copy.deepcopy(model)
    set_flat_params(without, plain)
    set_flat_params(with_hardening, hardened)
    weight, bias = without.linear.weight.detach(), without.linear.bias.detach()
    weight_change = with_hardening.linear.weight.detach() - weight
    bias_change = with_hardening.linear.bias.detach() - bias

    x_test, y_test = torch.from_numpy(test.x), torch.from_numpy(test.y)
    keep = torch.nonzero(y_test != TARGET).flatten()[:500]
    backdoor_inputs = stamp_square(x_test[keep])
    backdoor = loss_change_bounds(
        backdoor_inputs,
        weight=weight,
        weight_change=weight_change,
        labels=torch.full((500,), TARGET),
        bias=bias,
        bias_change=bias_change,
    )
    clean = loss_change_bounds(
        x_test[:500],
        weight=weight,
        weight_change=weight_change,
        labels=y_test[:500],
        bias=bias,
        bias_change=bias_change,
    )

    # Assert: the exact bounds hold on every input, and hardening raised the backdoor loss.
    for bounds in (backdoor, clean):
        assert np.all(bounds.lower <= bounds.actual + SLACK)
        assert np.all(bounds.actual <= bounds.upper + SLACK)
    assert backdoor.actual.mean() > 0
    assert np.mean(backdoor.lower > 0) > 0.9  # for (almost) every backdoor input the rise is certain


def test_mismatched_shapes_are_rejected():
    with pytest.raises(TheoryInputError, match="weight_change"):
        loss_change_bounds(
            np.ones((2, 3)),
            weight=np.ones((4, 3)),
            weight_change=np.ones((4, 2)),
            labels=np.zeros(2, int),
        )
    with pytest.raises(TheoryInputError, match="labels"):
        loss_change_bounds(
            np.ones((2, 3)),
            weight=np.ones((4, 3)),
            weight_change=np.ones((4, 3)),
            labels=np.array([0, 4]),
        )
