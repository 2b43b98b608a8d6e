"""FLIP's protocol: fixed attackers per round, server learning rate, last-rounds means, in-training
re-inversion with warm starts, and the defense never seeing the attack's trigger."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedshield.config import ConfigError, build_experiment
from fedshield.flip import FlipConfig, FlipHardening
from fedshield.models import LogisticRegression
from fedshield.run import run
from fedshield.server.rounds import sample_with_attackers
from fedshield.task.determinism import torch_generator
from fedshield.task.jobs import JobSpec
from fedshield.task.metrics import MetricError, mean_over_last_rounds
from helpers import backdoored_logistic, job_params, stamp_square_poison, tiny_config

TARGET = 2

# ---------------------------------------------------------------------- fixed attackers per round


def test_sample_with_attackers_holds_exactly_that_many_malicious_clients():
    job = JobSpec(job_id=0, seed=7, client_ids=tuple(range(100, 130)))
    malicious = frozenset({101, 105, 111, 117, 123, 129})
    samples = [
        sample_with_attackers(job, r, num_sampled=10, malicious=malicious, num_attackers=4) for r in range(1, 41)
    ]
    for sample in samples:
        assert len(sample) == 10 and len(set(sample)) == 10 and list(sample) == sorted(sample)
        assert len(malicious.intersection(sample)) == 4 and set(sample) <= set(job.client_ids)
    assert len(set(samples)) > 30  # still random across rounds
    again = sample_with_attackers(job, 3, num_sampled=10, malicious=malicious, num_attackers=4)
    assert again == samples[2]  # seeded by (job, round)


def test_sample_with_attackers_fills_up_when_one_kind_runs_out():
    job = JobSpec(job_id=0, seed=1, client_ids=tuple(range(8)))
    few_benign = sample_with_attackers(job, 1, num_sampled=6, malicious=frozenset(range(5)), num_attackers=2)
    assert len(few_benign) == 6 and {5, 6, 7} <= set(few_benign)  # all 3 benign, then attackers
    few_bad = sample_with_attackers(job, 1, num_sampled=4, malicious=frozenset({3}), num_attackers=2)
    assert len(few_bad) == 4 and 3 in few_bad


@pytest.mark.slow
def test_attacked_rounds_sample_exactly_attackers_per_round(tmp_path):
    overrides = [
        "num_clients=12",
        "num_rounds=4",
        "sample_fraction=0.5",
        "engine=local",
        "engine.workers=1",
        "attack=backdoor",
        "attack.num_malicious=4",
        "attack.schedule.start_round=2",
        "attackers_per_round=3",
    ]
    cfg = tiny_config(tmp_path, *overrides)
    malicious = build_experiment(cfg).malicious_ids
    run(cfg)
    rounds = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    counts = [len(malicious.intersection(r["participants"])) for r in rounds]
    assert counts[1:] == [3, 3, 3]  # attack active from round 2
    assert all(len(r["participants"]) == 6 for r in rounds)


def test_attackers_per_round_is_checked_before_training(tmp_path):
    with pytest.raises(ConfigError, match="attackers_per_round"):
        build_experiment(tiny_config(tmp_path, "attack=backdoor", "attack.num_malicious=2", "attackers_per_round=3"))
    with pytest.raises(ConfigError, match="attackers_per_round must be in"):
        build_experiment(tiny_config(tmp_path, "attack=backdoor", "attack.num_malicious=5", "attackers_per_round=4"))


# ---------------------------------------------------------------------- server learning rate


@pytest.mark.slow
def test_server_learning_rate_scales_the_aggregate_step(tmp_path):
    common = ["num_rounds=1", "engine=local", "engine.workers=1", "precision=float64"]
    run(tiny_config(tmp_path, *common, name="full"))
    run(tiny_config(tmp_path, *common, "server_learning_rate=0.25", name="quarter"))
    cfg = tiny_config(tmp_path, *common, name="init")
    experiment = build_experiment(cfg)
    from fedshield.models.params import get_flat_params

    initial = get_flat_params(experiment.initial_model(experiment.jobs[0]))
    full_step = job_params(tmp_path / "full") - initial
    quarter_step = job_params(tmp_path / "quarter") - initial
    torch.testing.assert_close(quarter_step, 0.25 * full_step, rtol=1e-12, atol=1e-15)
    assert float(full_step.abs().max()) > 0


# ---------------------------------------------------------------------- mean over the last rounds


def test_mean_over_last_rounds_uses_only_evaluated_rounds_in_the_window():
    history = [{"round": r, "attack_success_rate": r / 100} for r in range(1, 31)]
    history[-1].pop("attack_success_rate")  # round 30 not evaluated
    mean = mean_over_last_rounds(history, "attack_success_rate", last_round=30, window=10)
    assert mean == pytest.approx(np.mean([r / 100 for r in range(21, 30)]))
    assert mean_over_last_rounds(history, "missing", last_round=30) is None
    with pytest.raises(MetricError, match="window"):
        mean_over_last_rounds(history, "attack_success_rate", last_round=30, window=0)


# ---------------------------------------------------------------------- re-inversion, warm starts


@pytest.fixture(scope="module")
def backdoored_client():
    """A logistic regression trained with a 4x4 white square -> label 2, and 600 client samples."""
    return backdoored_logistic(stamp_square_poison(TARGET))


def _flip(**overrides) -> FlipHardening:
    settings = dict(num_classes=10, inversion_steps=120, universal_targets_per_round=None, exploration=0.0)
    return FlipHardening(FlipConfig(**(settings | overrides)))


@pytest.mark.slow
def test_warm_start_resumes_from_the_cached_trigger(backdoored_client):
    model, x, y = backdoored_client
    first = _flip(universal_targets_per_round=None).start(
        model, x, y, server_round=1, state={}, generator=torch_generator(0)
    )
    state = first.new_state()
    cached = torch.from_numpy(state["flip.mask.u.2"])
    assert cached.shape == (1, 28, 28) and state["flip.pattern.u.2"].shape == (1, 28, 28)

    # A re-warm-up participation: one warm step stays next to the cached mask; a fresh start does not.
    warm = _flip(rewarmup_every=1, warm_inversion_steps=1).start(
        model, x, y, server_round=2, state=state, generator=torch_generator(1)
    )
    cold = _flip(rewarmup_every=1, warm_start=False, inversion_steps=1).start(
        model, x, y, server_round=2, state=state, generator=torch_generator(1)
    )
    warm_mask = torch.from_numpy(warm.new_state()["flip.mask.u.2"])
    assert float((warm_mask - cached).abs().max()) < 0.1
    (cold_trigger,) = [t for t in cold.triggers if t.target_label == TARGET]
    assert float((cold_trigger.mask - cached).abs().mean()) > 0.2


@pytest.mark.slow
def test_triggers_are_reinverted_on_the_current_local_model_during_training(backdoored_client):
    model, x, y = backdoored_client
    state = _flip().start(model, x, y, server_round=1, state={}, generator=torch_generator(0)).new_state()
    local = LogisticRegression(input_shape=(1, 28, 28), num_classes=10)
    local.load_state_dict(model.state_dict())
    round_ = _flip(reinvert_every=2, warm_inversion_steps=5).start(
        local, x, y, server_round=2, state=state, generator=torch_generator(1)
    )
    planned = len(round_.plan)
    assert round_.inversions == planned and planned >= 1
    generator = torch_generator(2)
    sizes, reinverted, warm = [], [], []
    for batch in range(5):
        before = round_.inversions
        warm.append(sum(direction.key in round_.stored for direction in round_.plan))
        out_x, out_y = round_.transform(x[:64], y[:64], generator)
        reinverted.append(round_.inversions - before)
        sizes.append(len(out_y))
        assert torch.equal(out_y[:64], y[:64]) and torch.equal(out_x[:64], x[:64])
        if batch == 1:
            with torch.no_grad():  # local training moves the model: the next re-inversion sees it
                for parameter in local.parameters():
                    parameter.mul_(0.5)
    # re-inverted before batches 2 and 4 (every 2 batches): the directions with a cached
    # (plausible) trigger to warm-start from, on the model as training left it
    assert reinverted == [0, 0, warm[2], 0, warm[4]] and warm[2] >= 1
    assert any(size > 64 for size in sizes)  # stamped copies with true labels were appended


# ---------------------------------------------------------------------- the defense never sees the trigger


@pytest.mark.slow
def test_trigger_diagnostic_never_reaches_the_defense(tmp_path, monkeypatch):
    overrides = [
        "model=cnn",
        "num_clients=8",
        "num_rounds=2",
        "engine=local",
        "engine.workers=1",
        "attack=backdoor",
        "attack.num_malicious=2",
        "defense=flip",
        "defense.inversion_steps=5",
        "defense.warm_inversion_steps=2",
    ]
    run(tiny_config(tmp_path, *overrides, name="with_diagnostic"))
    from fedshield.attacks.backdoor import BackdoorAttack

    monkeypatch.setattr(BackdoorAttack, "trigger_region", lambda self, height, width: None)
    run(tiny_config(tmp_path, *overrides, name="without_diagnostic"))
    assert torch.equal(job_params(tmp_path / "with_diagnostic"), job_params(tmp_path / "without_diagnostic"))
    with_rounds = json.loads((tmp_path / "with_diagnostic" / "metrics.json").read_text())["rounds"]
    without_rounds = json.loads((tmp_path / "without_diagnostic" / "metrics.json").read_text())["rounds"]
    assert any("flip_on_trigger" in r for r in with_rounds)
    assert not any("flip_on_trigger" in r for r in without_rounds)
    assert all("flip_inversions" in r for r in with_rounds)
