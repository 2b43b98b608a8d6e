"""FLCert grouping (Cao et al., TIFS 2022, Sec. IV): keyed-hash disjoint groups and sampled groups."""

import hashlib
import math
import subprocess
import sys

import pytest

from fedshield.config import build_experiment, compose_config
from fedshield.config.user_errors import describe_user_error
from fedshield.data import make_user_ids
from fedshield.ensembles import FLCertD, FLCertP
from fedshield.ensembles.grouping import (
    GroupingError,
    balanced_groups,
    flcert_d_groups,
    flcert_p_groups,
    hash_group,
)
from fedshield.task.determinism import derive_seed
from fedshield.task.jobs import make_jobs

USERS = make_user_ids(200, seed=0)


def test_flcert_d_groups_are_a_partition():
    groups = flcert_d_groups(USERS, num_groups=10, key=42)
    members = [uid for group in groups for uid in group]
    assert sorted(members) == sorted(USERS)  # every client in exactly one group
    assert all(group == tuple(sorted(group)) for group in groups)


def test_flcert_d_group_depends_only_on_user_and_key():
    # Adding or removing other clients never moves a client: its group is hash(uid) mod N.
    groups = flcert_d_groups(USERS, num_groups=10, key=42)
    fewer = flcert_d_groups(USERS[:150], num_groups=10, key=42)
    for g, group in enumerate(fewer):
        assert set(group) <= set(groups[g])
    assert flcert_d_groups(USERS, num_groups=10, key=43) != groups


def test_flcert_d_hash_is_stable_across_processes():
    # Python's hash() is salted per process; ours must not be.
    code = "from fedshield.ensembles.grouping import hash_group; print(hash_group(123456789, num_groups=97, key=5))"
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert outputs == {f"{hash_group(123456789, num_groups=97, key=5)}\n"}


def test_flcert_d_balance_is_roughly_uniform():
    groups = flcert_d_groups(make_user_ids(5000, seed=1), num_groups=10, key=7)
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) < 150  # binomial(5000, 0.1): sd ~ 21


def test_flcert_p_groups_are_k_distinct_clients_seeded():
    groups = flcert_p_groups(USERS, num_groups=50, group_size=5, seed=3)
    assert len(groups) == 50 and all(len(set(g)) == 5 and set(g) <= set(USERS) for g in groups)
    assert groups == flcert_p_groups(USERS, num_groups=50, group_size=5, seed=3)
    assert groups != flcert_p_groups(USERS, num_groups=50, group_size=5, seed=4)


def test_flcert_p_exhaustive_enumerates_all_subsets():
    users = USERS[:6]
    groups = flcert_p_groups(users, num_groups=1, group_size=2, seed=0, exhaustive=True)
    assert len(groups) == math.comb(6, 2) == len(set(groups))
    with pytest.raises(GroupingError, match="max_exhaustive_groups=10"):
        flcert_p_groups(users, num_groups=1, group_size=3, seed=0, exhaustive=True, max_exhaustive_groups=10)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FLCertD(num_groups=0).check(10), r"ensemble.num_groups must be in \[1, n=10\]; got 0"),
        (lambda: FLCertD(num_groups=11).check(10), r"ensemble.num_groups must be in \[1, n=10\]; got 11"),
        (lambda: FLCertP(num_groups=5, group_size=11).check(10), r"ensemble.group_size must be in \[1, n=10\]; got 11"),
        (lambda: FLCertP(alpha=1.0), r"ensemble.alpha must be in \(0, 1\); got 1.0"),
        (lambda: FLCertP(alpha=0.0), r"ensemble.alpha must be in \(0, 1\)"),
        (lambda: FLCertP(bounds="loose"), "ensemble.bounds"),
        (lambda: FLCertD(grouping="foo"), "ensemble.grouping: must be 'balanced' or 'hash'; got 'foo'"),
    ],
)
def test_bad_ensemble_values_name_the_field(make, message):
    with pytest.raises(GroupingError, match=message):
        make()


def test_default_group_size_is_n_over_N():
    assert FLCertP(num_groups=10).resolved_group_size(100) == 10


def test_job_seeds_are_per_group_and_reproducible():
    jobs = make_jobs(flcert_d_groups(USERS, num_groups=4, key=1), run_seed=9)
    assert [j.job_id for j in jobs] == [0, 1, 2, 3]
    assert len({j.seed for j in jobs}) == 4
    assert jobs == make_jobs(flcert_d_groups(USERS, num_groups=4, key=1), run_seed=9)


def test_flcert_d_empty_groups_train_no_job_and_keep_their_index():
    users = make_user_ids(20, seed=0)
    groups = flcert_d_groups(users, num_groups=15, key=3)  # 20 clients in 15 buckets: some empty
    assert any(not g for g in groups), "pick a key that leaves a group empty"
    jobs = make_jobs(groups, run_seed=0)
    assert [j.job_id for j in jobs] == [g for g, members in enumerate(groups) if members]
    assert all(jobs[i].client_ids == groups[jobs[i].job_id] for i in range(len(jobs)))


# Balanced FLCert-D grouping: every group votes.


@pytest.mark.parametrize("num_clients, num_groups", [(1000, 500), (20, 15), (200, 7), (30, 30), (30, 1)])
def test_balanced_groups_partition_the_clients_into_sizes_within_one(num_clients, num_groups):
    users = make_user_ids(num_clients, seed=2)
    groups = balanced_groups(users, num_groups=num_groups, key=11)
    assert len(groups) == num_groups
    assert sorted(uid for group in groups for uid in group) == sorted(users)  # disjoint, covering
    sizes = [len(group) for group in groups]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert all(group == tuple(sorted(group)) for group in groups)


def test_balanced_groups_are_keyed_and_deterministic():
    groups = balanced_groups(USERS, num_groups=10, key=42)
    assert groups == balanced_groups(USERS, num_groups=10, key=42)
    assert groups != balanced_groups(USERS, num_groups=10, key=43)
    # The deal is by keyed rank, not by user ID order: the grouping is not the identity deal.
    assert groups != [tuple(sorted(sorted(USERS)[g::10])) for g in range(10)]


def test_balanced_groups_refuse_more_groups_than_clients():
    with pytest.raises(GroupingError, match=r"ensemble.num_groups must be in \[1, n=5\]; got 6"):
        balanced_groups(USERS[:5], num_groups=6, key=0)


def test_hash_grouping_is_the_papers_keyed_blake2b_mod_n():
    """grouping=hash gives the groups it always gave: BLAKE2b(uid, key=derive_seed(...)) mod N."""
    seed, num_groups = 3, 15
    key = derive_seed("flcert-d-key", seed).to_bytes(8, "little")
    expected: list[list[int]] = [[] for _ in range(num_groups)]
    for uid in USERS:
        digest = hashlib.blake2b(uid.to_bytes(8, "little"), digest_size=8, key=key).digest()
        expected[int.from_bytes(digest, "little") % num_groups].append(uid)
    groups = FLCertD(num_groups=num_groups, grouping="hash").groups(USERS, seed=seed)
    assert groups == [tuple(sorted(members)) for members in expected]
    assert groups == flcert_d_groups(USERS, num_groups=num_groups, key=derive_seed("flcert-d-key", seed))


def flcert_d_experiment(tmp_path, *overrides):
    cfg = compose_config(
        ["ensemble=flcert_d", "num_clients=20", "ensemble.num_groups=15", *overrides], output_dir=tmp_path
    )
    return build_experiment(cfg, log_warnings=False)


def test_flcert_d_config_deals_balanced_groups_by_default(tmp_path):
    balanced = flcert_d_experiment(tmp_path)
    assert len(balanced.jobs) == 15  # every group trains a model and votes
    assert [job.client_ids for job in balanced.jobs] == FLCertD(num_groups=15, grouping="balanced").groups(
        balanced.federation.user_ids, seed=balanced.seed
    )
    hashed = flcert_d_experiment(tmp_path, "ensemble.grouping=hash")
    assert len(hashed.jobs) < 15  # 20 clients hashed into 15 buckets leave some empty


def test_unknown_grouping_is_a_one_line_user_error(tmp_path):
    with pytest.raises(Exception) as raised:
        flcert_d_experiment(tmp_path, "ensemble.grouping=foo")
    assert describe_user_error(raised.value) == "ensemble.grouping: must be 'balanced' or 'hash'; got 'foo'"
