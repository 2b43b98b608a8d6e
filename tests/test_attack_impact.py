"""Each attack measurably hurts the rule it targets, in short runs on real MNIST (the 10k set);
malformed replies are dropped and logged by every rule, through the real client path."""

import json
import logging

import pytest
import torch

from fedshield.run import run
from helpers import MaliciousAbsentEngine, job_params, tiny_config

pytestmark = pytest.mark.slow


def _mnist(shared_mnist_root):
    return [
        "dataset=mnist",
        f"dataset.root={shared_mnist_root}",
        "model=logistic",
        "engine=local",
        "engine.workers=1",
        "num_clients=20",
        "sample_fraction=1.0",
        "num_rounds=8",
        "client.local_steps=5",
        "client.batch_size=32",
        "client.learning_rate=0.1",
        "eval_every=0",
    ]


def _final(tmp_path, name, *overrides):
    run(tiny_config(tmp_path, *overrides, name=name))
    return json.loads((tmp_path / name / "summary.json").read_text())


@pytest.mark.parametrize(
    "rule, attack, extra",
    [
        ("trimmed_mean", "trim", ["strategy.num_trimmed=4", "model=cnn", "partition=fang", "num_rounds=10"]),
        ("median", "trim", ["model=cnn", "partition=fang", "num_rounds=10"]),
        ("krum", "krum", ["strategy.num_malicious=4", "model=cnn", "num_rounds=10"]),
        ("fedavg", "zero_update", []),
    ],
)
def test_untargeted_attack_lowers_accuracy(tmp_path, shared_mnist_root, rule, attack, extra):
    base = [*_mnist(shared_mnist_root), f"strategy={rule}", *extra]
    clean = _final(tmp_path, "clean", *base)
    attacked = _final(tmp_path, "attacked", *base, f"attack={attack}", "attack.num_malicious=4")
    assert clean["final_accuracy"] > 0.4
    assert attacked["final_accuracy"] < clean["final_accuracy"] - 0.1, (
        clean["final_accuracy"],
        attacked["final_accuracy"],
    )


def test_scaled_backdoor_beats_fedavg(tmp_path, shared_mnist_root):
    # Model replacement (Bagdasaryan et al.): 2 of 20 attackers boost by n / m = 10 and train
    # the backdoor for 100 local steps of their own.
    base = [*_mnist(shared_mnist_root), "model=cnn", "strategy=fedavg", "num_rounds=5", "client.local_steps=10"]
    attacked = _final(
        tmp_path,
        "backdoor",
        *base,
        "attack=backdoor",
        "attack.num_malicious=2",
        "attack.scale=10",
        "attack.local_steps=100",
    )
    assert attacked["final_attack_success_rate"] > 0.8
    assert attacked["final_accuracy"] > 0.5


@pytest.mark.parametrize(
    "rule", ["fedavg", "krum", "multi_krum", "trimmed_mean", "median", "bulyan", "rfa", "fltrust", "foolsgold"]
)
def test_malformed_replies_are_dropped_by_every_rule(tmp_path, rule, caplog):
    # Prepare: one malicious client of 8, sampled every round, sends garbage (NaN, inf, huge,
    # wrong shape, integers); the replay is the same run where that client's reply never arrives.
    overrides = [
        f"strategy={rule}",
        "num_clients=8",
        "sample_fraction=1.0",
        "num_rounds=5",
        "engine=local",
        "engine.workers=1",
        "attack._target_=helpers.MalformedReplyAttack",
        "attack.num_malicious=1",
    ]

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedshield.rules.screening"):
        summary = run(tiny_config(tmp_path, *overrides, name="garbage"))
    run(tiny_config(tmp_path, *overrides, name="absent"), engine=MaliciousAbsentEngine())

    # Assert: each round's garbage reply was dropped, and only that reply ...
    garbage = json.loads((tmp_path / "garbage" / "metrics.json").read_text())["rounds"]
    absent = json.loads((tmp_path / "absent" / "metrics.json").read_text())["rounds"]
    assert [(r["replies"], r["rejected"], r["missing"]) for r in garbage] == [(8, 1, 0)] * 5
    assert [(r["replies"], r["rejected"], r["missing"]) for r in absent] == [(7, 0, 1)] * 5
    assert summary["rejected_replies"] == 5
    # ... so the global model is, bit for bit, the one aggregated without it.
    params = job_params(tmp_path / "garbage")
    assert bool(torch.isfinite(params).all())
    assert torch.equal(params, job_params(tmp_path / "absent"))
    assert [(r["accuracy"], r["test_loss"]) for r in garbage] == [(r["accuracy"], r["test_loss"]) for r in absent]
    # The log names the dropped client (the one missing from the replay) in every round, with the reason.
    (malicious,) = set(garbage[0]["participants"]) - set(absent[0]["participants"])
    dropped = [m for m in caplog.messages if m.startswith(f"screening: dropped the reply of client {malicious}: ")]
    reasons = ["NaN or inf", "NaN or inf", "L2 norm", "shape", "non-floating dtype"]  # MalformedReplyAttack.KINDS
    assert len(dropped) == len(reasons), caplog.messages
    assert all(reason in message for reason, message in zip(reasons, dropped, strict=True)), dropped
    assert not any("dropped the reply" in m and str(malicious) not in m for m in caplog.messages)
