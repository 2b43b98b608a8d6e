"""Checks that need only the config and the data run in build_experiment, before any training:
clients without samples, the Krum attack's budget, and Krum's assumed number of attackers."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from fedshield.attacks.selection import choose_malicious
from fedshield.config import ConfigError, build_experiment, experiment_from_yaml
from fedshield.run import run
from fedshield.task.jobs import make_jobs
from helpers import tiny_config

BUILD_LOGGER = "fedshield.config.build"
# mnist5k's 4,000 training images over 1,000 Fang clients (q = 0.5) leave 18 clients empty.
SPARSE_FANG = ["partition=fang", "num_clients=1000"]


def _empty_clients(experiment) -> set[int]:
    federation = experiment.federation
    return {uid for uid in federation.user_ids if len(federation.indices_of(uid)) == 0}


def _groups_of_all_clients(experiment, seed: int = 0):
    """The jobs as grouped from every client of the federation, empty or not."""
    return make_jobs(experiment.ensemble.groups(experiment.federation.user_ids, seed=seed), run_seed=seed)


# ----------------------------------------------------------------------------- empty clients


def test_clients_without_samples_take_no_part_and_are_counted_once(tmp_path, caplog):
    cfg = tiny_config(tmp_path, *SPARSE_FANG, "ensemble=flcert_d", "ensemble.num_groups=10")

    with caplog.at_level(logging.WARNING, logger=BUILD_LOGGER):
        experiment = build_experiment(cfg)

    empty = _empty_clients(experiment)
    assert empty, "the partition must leave some client empty for this test to mean anything"
    members = {uid for job in experiment.jobs for uid in job.client_ids}
    assert not members & empty
    assert not experiment.malicious_ids & empty
    # Each job keeps its id, seed and every client that has samples: only the empty ones go.
    expected = [
        (job.job_id, job.seed, tuple(u for u in job.client_ids if u not in empty))
        for job in _groups_of_all_clients(experiment)
    ]
    assert [(job.job_id, job.seed, job.client_ids) for job in experiment.jobs] == expected
    warnings = [m for m in caplog.messages if m.startswith("partition: ")]
    assert warnings == [f"partition: {len(empty)} of 1000 clients have no samples and take no part"]
    # A worker rebuilding the run from its config gets the same jobs and does not warn again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=BUILD_LOGGER):
        assert experiment_from_yaml(experiment.config_yaml).jobs == experiment.jobs
    assert not caplog.messages


def test_a_job_of_only_empty_clients_is_refused_before_training(tmp_path):
    # 250 FLCert-D hash groups of the 1,000 clients: groups 46 and 101 hold only empty clients.
    cfg = tiny_config(
        tmp_path, *SPARSE_FANG, "ensemble=flcert_d", "ensemble.grouping=hash", "ensemble.num_groups=250", "engine=local"
    )

    with pytest.raises(ConfigError, match=r"^partition: job 46 .*without samples.*; got partition\.scheme=fang"):
        run(cfg)

    assert not (tmp_path / "run" / "jobs").exists()  # nothing trained, no checkpoint written


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["ensemble=flcert_d", "ensemble.num_groups=3", "num_clients=12", "attack=backdoor", "attack.num_malicious=2"],
        ["ensemble=flcert_p", "ensemble.num_groups=4", "ensemble.group_size=3", "partition=fang", "num_clients=20"],
    ],
)
def test_without_empty_clients_the_jobs_and_attackers_are_those_of_all_clients(tmp_path, overrides):
    experiment = build_experiment(tiny_config(tmp_path, *overrides))

    assert not _empty_clients(experiment)
    assert experiment.jobs == _groups_of_all_clients(experiment)
    user_ids = experiment.federation.user_ids
    assert experiment.malicious_ids == choose_malicious(user_ids, num_malicious=experiment.attack.num_malicious, seed=0)


# ----------------------------------------------------------------------- the Krum attack's budget


@pytest.mark.parametrize(
    "overrides",
    [
        # 3 of 6 clients sampled, both attackers can be among them: 3 < 2 * 2 + 3.
        ["attack.num_malicious=2"],
        # FLIP's protocol puts exactly 2 attackers in each round of 6 sampled: 6 < 2 * 2 + 3.
        ["num_clients=12", "attack.num_malicious=3", "attackers_per_round=2"],
    ],
)
def test_the_krum_attack_budget_is_checked_when_the_run_is_built(tmp_path, overrides):
    cfg = tiny_config(tmp_path, "attack=krum", *overrides)

    with pytest.raises(ConfigError, match=r"^attack\.num_malicious: .*2 \* num_malicious \+ 3.*; got "):
        build_experiment(cfg)


def test_the_krum_attack_passes_when_every_sample_leaves_room(tmp_path):
    # 10 of 20 sampled per round, at most 3 of them attackers: 10 >= 2 * 3 + 3.
    cfg = tiny_config(tmp_path, "attack=krum", "num_clients=20", "attack.num_malicious=3")

    assert build_experiment(cfg).attack.num_malicious == 3


# ------------------------------------------------------------------- Krum's assumed attackers f


# 20 clients, all sampled each round, 3 of them backdoor attackers.
THREE_ATTACKERS_IN_EVERY_ROUND = ["num_clients=20", "sample_fraction=1.0", "attack=backdoor", "attack.num_malicious=3"]


@pytest.mark.parametrize("rule", ["krum", "multi_krum", "bulyan"])
def test_the_rules_f_defaults_to_the_attacks_count(tmp_path, rule, caplog):
    cfg = tiny_config(tmp_path, f"strategy={rule}", *THREE_ATTACKERS_IN_EVERY_ROUND)

    with caplog.at_level(logging.WARNING, logger=BUILD_LOGGER):
        experiment = build_experiment(cfg)

    assert experiment.new_rule().num_malicious == 3
    assert not [m for m in caplog.messages if "strategy.num_malicious" in m]
    # The run folder's config.yaml records the f the rule ran with, and workers rebuild it.
    assert OmegaConf.create(experiment.config_yaml).strategy.num_malicious == 3
    assert experiment_from_yaml(experiment.config_yaml).new_rule().num_malicious == 3


def test_the_rules_f_stays_one_without_attack_and_as_set_when_set(tmp_path):
    no_attack = build_experiment(tiny_config(tmp_path, "strategy=krum", "num_clients=20"))
    explicit = build_experiment(
        tiny_config(
            tmp_path,
            "strategy=krum",
            "strategy.num_malicious=4",
            "num_clients=20",
            "sample_fraction=1.0",
            "attack.num_malicious=2",
        )
    )

    assert no_attack.new_rule().num_malicious == 1  # the former default: attack-free runs are unchanged
    assert explicit.new_rule().num_malicious == 4


def test_a_rule_assuming_fewer_attackers_than_the_attack_warns_once(tmp_path, caplog):
    cfg = tiny_config(tmp_path, "strategy=krum", "strategy.num_malicious=1", *THREE_ATTACKERS_IN_EVERY_ROUND)

    with caplog.at_level(logging.WARNING, logger=BUILD_LOGGER):
        experiment = build_experiment(cfg)

    assert experiment.new_rule().num_malicious == 1  # kept as set
    warnings = [m for m in caplog.messages if "strategy.num_malicious" in m]
    assert len(warnings) == 1 and "strategy.num_malicious=1" in warnings[0] and "attack.num_malicious=3" in warnings[0]


def test_a_rule_budget_the_sample_cannot_meet_is_a_config_error(tmp_path):
    # f = 3 from the attack: Krum needs 2 * 3 + 3 = 9 of the 10 // 2 = 5 sampled clients.
    cfg = tiny_config(tmp_path, "strategy=krum", "num_clients=10", "attack=backdoor", "attack.num_malicious=3")

    with pytest.raises(ConfigError, match=r"^strategy: job 0 .*num_malicious=3.*; got num_clients=5$"):
        build_experiment(cfg)
