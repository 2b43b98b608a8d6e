"""Tests of RuleStrategy: configure_train / aggregate_train with hand-built Flower Messages."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedshield.engines.flower.strategy import RuleStrategy, flatten_arrays, unflatten_arrays
from fedshield.rules import FedAvg, FLTrust, FoolsGold, Krum, Median

NODE_IDS = [11, 12, 13, 14, 15, 16, 17]


class _StaticGrid:
    """The part of flwr's Grid that FedAvg.configure_train uses: the connected node ids."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages read the run and node of the current process; set them."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def _global_arrays() -> ArrayRecord:
    return ArrayRecord(
        {
            "weight": Array(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)),
            "bias": Array(np.array([0.5, -0.5], dtype=np.float32)),
            "num_batches_tracked": Array(np.array(7, dtype=np.int64)),
        }
    )


def _arrays_with_update(update: list[float], *, counter: int = 99) -> ArrayRecord:
    """Global arrays plus a flat update of 6 floats (weight row-major, then bias)."""
    weight = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    bias = np.array([0.5, -0.5], dtype=np.float32)
    flat = np.asarray(update, dtype=np.float32)
    return ArrayRecord(
        {
            "weight": Array(weight + flat[:4].reshape(2, 2)),
            "bias": Array(bias + flat[4:]),
            "num_batches_tracked": Array(np.array(counter, dtype=np.int64)),
        }
    )


def _reply(instruction: Message, arrays: ArrayRecord, *, num_examples: float = 10.0, loss: float = 0.5) -> Message:
    metrics = MetricRecord({"num-examples": num_examples, "loss": loss})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=instruction)


def _instructions(strategy: RuleStrategy | FlowerFedAvg) -> dict[int, Message]:
    messages = strategy.configure_train(1, _global_arrays(), ConfigRecord({"lr": 0.1}), _StaticGrid(NODE_IDS))
    return {message.metadata.dst_node_id: message for message in messages}


def _honest_update(node_id: int) -> list[float]:
    """Client node_id moves every float parameter by node_id - 14 (values -3 .. 3)."""
    return [float(node_id - 14)] * 6


def test_flatten_and_unflatten_are_inverse_and_skip_integer_arrays() -> None:
    # Prepare
    reference = _global_arrays()

    # Execute
    vector = flatten_arrays(reference, reference=reference)
    rebuilt = unflatten_arrays(vector + 1.0, reference=reference)

    # Assert: weight (4) then bias (2); the int64 counter is not aggregated and keeps 7.
    np.testing.assert_array_equal(vector, [1.0, 2.0, 3.0, 4.0, 0.5, -0.5])
    assert vector.dtype == np.float32
    assert list(rebuilt.keys()) == ["weight", "bias", "num_batches_tracked"]
    np.testing.assert_array_equal(rebuilt["weight"].numpy(), [[2.0, 3.0], [4.0, 5.0]])
    np.testing.assert_array_equal(rebuilt["bias"].numpy(), [1.5, 0.5])
    assert rebuilt["num_batches_tracked"].numpy() == 7
    assert rebuilt["weight"].numpy().dtype == np.float32


def test_median_strategy_screens_and_aggregates_replies() -> None:
    # Prepare: 7 nodes; 5 honest replies with updates -3 .. 1 (nodes 11..15), node 16 sends NaN,
    # node 17 sends arrays with a missing key, node 11 replies twice (the second is dropped).
    # Median of -3, -2, -1, 0, 1 is -1.
    strategy = RuleStrategy(Median(), max_norm=100.0)
    instructions = _instructions(strategy)
    replies = [_reply(instructions[node], _arrays_with_update(_honest_update(node))) for node in NODE_IDS[:5]]
    replies.append(_reply(instructions[16], _arrays_with_update([float("nan")] * 6)))
    broken = ArrayRecord({"weight": Array(np.zeros((2, 2), dtype=np.float32))})
    replies.append(_reply(instructions[17], broken))
    replies.append(_reply(instructions[11], _arrays_with_update([9.0] * 6), loss=100.0))

    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)

    # Assert
    assert arrays is not None
    np.testing.assert_array_equal(arrays["weight"].numpy(), [[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(arrays["bias"].numpy(), [-0.5, -1.5])
    assert arrays["num_batches_tracked"].numpy() == 7  # integer arrays keep the global value
    assert metrics["num-rejected"] == 3
    assert metrics["loss"] == pytest.approx(0.5)


def test_fedavg_rule_matches_flower_fedavg_on_honest_replies() -> None:
    # Prepare: weighted by num-examples 1..7 in both strategies.
    ours, flowers = RuleStrategy(FedAvg()), FlowerFedAvg()
    our_instructions, flower_instructions = _instructions(ours), _instructions(flowers)

    def replies(instructions: dict[int, Message]) -> list[Message]:
        return [
            _reply(
                instructions[node],
                _arrays_with_update(_honest_update(node), counter=7),
                num_examples=float(node - 10),
            )
            for node in NODE_IDS
        ]

    # Execute
    our_arrays, our_metrics = ours.aggregate_train(1, replies(our_instructions))
    flower_arrays, _ = flowers.aggregate_train(1, replies(flower_instructions))

    # Assert
    for key in ("weight", "bias"):
        np.testing.assert_allclose(our_arrays[key].numpy(), flower_arrays[key].numpy(), rtol=1e-6)
    assert our_metrics["num-rejected"] == 0


def test_too_few_valid_replies_keep_the_global_model(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: Krum with f = 2 needs 7 replies; one of 7 has an int64 weight array.
    strategy = RuleStrategy(Krum(num_malicious=2))
    instructions = _instructions(strategy)
    replies = [_reply(instructions[node], _arrays_with_update(_honest_update(node))) for node in NODE_IDS[:6]]
    wrong_dtype = _arrays_with_update([0.0] * 6)
    wrong_dtype["bias"] = Array(np.array([1, 2], dtype=np.int64))
    replies.append(_reply(instructions[17], wrong_dtype))

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedshield.engines.flower.strategy"):
        arrays, metrics = strategy.aggregate_train(1, replies)

    # Assert
    assert arrays is None
    assert metrics["num-rejected"] == 1
    assert "array 'bias' has non-floating dtype int64" in caplog.text
    assert "keeping the global model" in caplog.text


def test_foolsgold_strategy_keys_history_by_node_id() -> None:
    # Prepare: two rounds; nodes 11 and 12 send the same update (sybils), nodes 13..17 the
    # unit vectors e1..e5. A FoolsGold rule fed the same updates with the node ids as client
    # ids must give the same aggregate; the sybils get weight 0, so coordinate 0 (which only
    # they move) stays 0.
    strategy, direct = RuleStrategy(FoolsGold()), FoolsGold()
    sybil = [5.0, 5.0, 0.0, 0.0, 0.0, 0.0]
    updates = {11: sybil, 12: sybil} | {node: list(np.eye(6)[node - 12]) for node in NODE_IDS[2:]}

    # Execute
    for server_round in (1, 2):
        instructions = _instructions(strategy)
        replies = [_reply(instructions[node], _arrays_with_update(updates[node])) for node in NODE_IDS]
        arrays, metrics = strategy.aggregate_train(server_round, replies)
        expected = direct(
            torch.tensor([updates[node] for node in NODE_IDS], dtype=torch.float32),
            client_ids=NODE_IDS,
        )

    # Assert
    assert metrics["num-rejected"] == 0
    reference = _global_arrays()
    update = flatten_arrays(arrays, reference=reference) - flatten_arrays(reference, reference=reference)
    np.testing.assert_allclose(update, expected.numpy(), atol=1e-6)
    assert update[0] == 0.0
    assert (update[1:] > 0).all()


def test_fltrust_strategy_requires_and_uses_a_server_update() -> None:
    # Prepare: the server update points along +1 everywhere; the honest clients too,
    # node 17 points the opposite way with a large norm (kept by screening, zero trust).
    with pytest.raises(ValueError, match="server_update_fn"):
        RuleStrategy(FLTrust())
    strategy = RuleStrategy(FLTrust(), server_update_fn=lambda server_round, arrays: torch.ones(6))
    instructions = _instructions(strategy)
    replies = [_reply(instructions[node], _arrays_with_update([1.0] * 6)) for node in NODE_IDS[:6]]
    replies.append(_reply(instructions[17], _arrays_with_update([-50.0] * 6)))

    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)

    # Assert: six clients with TS = 1, each rescaled to ||g0|| = sqrt(6): update = ones.
    np.testing.assert_allclose(arrays["bias"].numpy(), [1.5, 0.5], rtol=1e-6)
