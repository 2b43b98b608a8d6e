"""choose_malicious, Schedule coercion, and instantiating every fedshield/conf/attack/*.yaml with Hydra."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import fedshield.attacks as attacks
from fedshield.attacks import (
    Attack,
    AttackError,
    BackdoorAttack,
    PixelPatternTrigger,
    Schedule,
    as_schedule,
    choose_malicious,
)
from fedshield.config import CONFIG_DIR
from fedshield.task.determinism import derive_seed

CONF = CONFIG_DIR / "attack"

# ---------------------------------------------------------------------------- selection


@settings(max_examples=30, deadline=None)
@given(
    user_ids=st.lists(st.integers(0, 10_000), min_size=1, max_size=40, unique=True),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_choose_malicious_ignores_the_order_of_user_ids(user_ids, seed, data):
    num_malicious = data.draw(st.integers(0, len(user_ids)))
    shuffled = data.draw(st.permutations(user_ids))
    chosen = choose_malicious(user_ids, num_malicious=num_malicious, seed=seed)
    assert chosen == choose_malicious(shuffled, num_malicious=num_malicious, seed=seed)
    assert len(chosen) == num_malicious and chosen <= set(user_ids)


def test_choose_malicious_takes_the_smallest_derived_seeds_and_nests():
    user_ids = list(range(30))
    keys = sorted(user_ids, key=lambda uid: derive_seed("malicious", 4, uid))
    assert choose_malicious(user_ids, num_malicious=5, seed=4) == frozenset(keys[:5])
    assert choose_malicious(user_ids, num_malicious=3, seed=4) <= choose_malicious(user_ids, num_malicious=6, seed=4)
    assert choose_malicious(user_ids, num_malicious=5, seed=5) != choose_malicious(user_ids, num_malicious=5, seed=4)


@pytest.mark.parametrize("num_malicious", [-1, 4])
def test_choose_malicious_rejects_out_of_range_counts(num_malicious):
    with pytest.raises(AttackError, match="attack.num_malicious"):
        choose_malicious([1, 2, 3], num_malicious=num_malicious, seed=0)


# ----------------------------------------------------------------------------- schedule


def test_schedule_from_mapping_and_validation():
    assert as_schedule({"start_round": 1, "end_round": None, "rounds": [7, 3, 3]}) == Schedule(rounds=(3, 7))
    assert as_schedule(None) == Schedule()
    with pytest.raises(AttackError, match="end_round"):
        Schedule(start_round=5, end_round=4)
    with pytest.raises(AttackError, match="rounds"):
        Schedule(rounds=())
    with pytest.raises(AttackError, match="unknown keys"):
        as_schedule({"first_round": 2})
    with pytest.raises(AttackError, match="attack.num_malicious"):
        BackdoorAttack(num_malicious=-1)


# -------------------------------------------------------------------------- Hydra configs

EXPECTED_CLASSES = {
    "none": "NoAttack",
    "krum": "KrumAttack",
    "trim": "TrimAttack",
    "zero_update": "ZeroUpdateAttack",
    "lie": "LIEAttack",
    "ipm": "IPMAttack",
    "min_max": "MinMaxAttack",
    "sign_flip": "SignFlipAttack",
    "gaussian": "GaussianAttack",
    "label_flip": "LabelFlipAttack",
    "backdoor": "BackdoorAttack",
    "backdoor_single_shot": "BackdoorAttack",
    "dba": "DistributedBackdoorAttack",
    "adaptive_flip": "AdaptiveFlipBackdoor",
}


# Configs that interpolate the dataset's settings, so they only load inside a full config
# (covered by tests/test_reddit.py).
NEEDS_DATASET = {"text_backdoor": "TextBackdoorAttack"}


def test_every_attack_has_a_config():
    assert {path.stem for path in CONF.glob("*.yaml")} == set(EXPECTED_CLASSES) | set(NEEDS_DATASET)


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_config_instantiates_its_attack(name):
    config = OmegaConf.load(CONF / f"{name}.yaml")
    config.num_malicious = 3
    attack = instantiate(config)
    assert type(attack) is getattr(attacks, EXPECTED_CLASSES[name])
    assert isinstance(attack, Attack) and isinstance(attack.schedule, Schedule)
    assert attack.num_malicious == 3


def test_backdoor_configs_schedules_and_triggers():
    continuous = instantiate(OmegaConf.load(CONF / "backdoor.yaml"), num_malicious=1)
    single = instantiate(OmegaConf.load(CONF / "backdoor_single_shot.yaml"), num_malicious=1)
    dba = instantiate(OmegaConf.load(CONF / "dba.yaml"), num_malicious=4)
    assert continuous.schedule.rounds is None and single.schedule.rounds == (10,)
    assert isinstance(continuous.trigger, PixelPatternTrigger)
    assert continuous.trigger == PixelPatternTrigger()
    assert len(dba.local_triggers) == 4
    assert int(dba.trigger.mask(28, 28).sum()) == 16
    boosted = single.post_process(torch.ones(1), server_round=10, num_sampled=10)
    assert float(boosted) == pytest.approx(100.0)
