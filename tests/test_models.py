import copy

import pytest
import torch

from fedshield.models import MLP, LogisticRegression, MnistCNN, ResNet20
from fedshield.models.params import get_flat_params, num_flat_params, set_flat_params
from fedshield.task.determinism import derive_seed, torch_generator
from fedshield.task.training import LocalTrainingConfig, batch_indices, local_train


@pytest.mark.parametrize(
    "model, shape, num_classes",
    [
        (MnistCNN(input_shape=(1, 28, 28), num_classes=10), (1, 28, 28), 10),
        (ResNet20(input_shape=(3, 32, 32), num_classes=7), (3, 32, 32), 7),
        (MLP(input_shape=(561,), num_classes=6), (561,), 6),
        (LogisticRegression(input_shape=(1, 28, 28), num_classes=10), (1, 28, 28), 10),
    ],
    ids=["cnn", "resnet20", "mlp", "logistic"],
)
def test_shapes_and_flat_params_roundtrip(model, shape, num_classes):
    # Prepare: eval mode, so BatchNorm uses the running statistics the flat vector carries.
    model.eval()
    x = torch.rand(3, *shape, generator=torch_generator(0))
    state = model.state_dict()
    float_entries = {name: t for name, t in state.items() if t.is_floating_point()}
    integer_entries = {name: t.clone() for name, t in state.items() if not t.is_floating_point()}
    by_hand = copy.deepcopy(model)  # the reference, loaded through load_state_dict below
    # Every parameter and every floating buffer (BatchNorm's running mean and variance), nothing else.
    expected_length = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for b in model.buffers() if b.is_floating_point()
    )

    # Execute
    with torch.no_grad():
        logits = model(x)
        vector = get_flat_params(model)
        # A new point: every entry moved, BatchNorm variances stay positive.
        new = vector * 1.5 + 0.01 * torch.rand(vector.shape, generator=torch_generator(1))
        set_flat_params(model, new)
        new_logits = model(x)

    # Assert
    assert logits.shape == (3, num_classes)
    assert vector.shape == (num_flat_params(model),) == (expected_length,)
    assert vector.shape == (sum(t.numel() for t in float_entries.values()),)
    torch.testing.assert_close(get_flat_params(model), new, rtol=0, atol=0)
    # The vector is the float entries in state_dict order: slice it by hand into the reference.
    sliced, offset = {}, 0
    for name, tensor in float_entries.items():
        sliced[name] = new[offset : offset + tensor.numel()].view_as(tensor)
        offset += tensor.numel()
    by_hand.load_state_dict({**sliced, **integer_entries})
    with torch.no_grad():
        torch.testing.assert_close(new_logits, by_hand(x), rtol=0, atol=0)
    assert not torch.allclose(new_logits, logits)  # the new parameters took effect
    for name, value in integer_entries.items():  # integer buffers are not part of the vector
        assert torch.equal(model.state_dict()[name], value), name
    # Neither function aliases the model's memory: get returns a copy, set copies in.
    kept = new.clone()
    get_flat_params(model).zero_()
    new.zero_()
    torch.testing.assert_close(get_flat_params(model), kept, rtol=0, atol=0)
    with pytest.raises(ValueError, match="parameter vector must have shape"):
        set_flat_params(model, vector[:-1])


def test_flcert_cnn_has_two_conv_and_two_fc_layers():
    model = MnistCNN()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 2 and len(linears) == 2
    assert 40_000 < num_flat_params(model) < 50_000


def test_batches_are_seeded_epochs():
    batches = batch_indices(10, batch_size=4, num_batches=5, generator=torch_generator(1))
    # Two full batches per epoch: indices within an epoch never repeat.
    assert len(set(torch.cat(batches[:2]).tolist())) == 8
    again = batch_indices(10, batch_size=4, num_batches=5, generator=torch_generator(1))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


@pytest.mark.slow  # runs local_train
def test_local_train_is_a_pure_function_of_its_seed():
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    config = LocalTrainingConfig(local_steps=3, batch_size=16, learning_rate=0.1)
    results = []
    for seed in (5, 5, 6):
        model = MnistCNN()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = MnistCNN()
        local_train(model, x, y, config=config, generator=torch_generator(seed))
        results.append(get_flat_params(model))
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


def test_derive_seed_depends_on_every_part():
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2)
    assert len({derive_seed(1, "a", 2), derive_seed(1, "a", 3), derive_seed(2, "a", 2), derive_seed("1", "a", 2)}) == 4
    with pytest.raises(TypeError):
        derive_seed(1.5)


def test_training_config_errors_name_fields():
    with pytest.raises(ValueError, match="client.local_steps"):
        LocalTrainingConfig(local_steps=0)
    with pytest.raises(ValueError, match="client.learning_rate"):
        LocalTrainingConfig(learning_rate=0)
