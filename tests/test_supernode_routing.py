"""Users routed to SuperNodes: pool nodes serving many users, nodes that leave and rejoin, and
the fedshield build check (:mod:`fedshield.engines.flower.nodes`).

The training tests run the real GridEngine and ClientApp over :class:`grid_fakes.InProcessGrid`,
whose nodes can stop and start between exchanges; the real processes (``flower-superlink`` and
``flower-supernode``) are in tests/test_process_federation.py."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from flwr.app import Message

import fedshield
from fedshield.config import build_experiment
from fedshield.engines.flower.grid import GridEngine
from fedshield.engines.flower.nodes import (
    NodeDirectory,
    NodeDiscoveryError,
    NodeInfo,
    NodeVersionError,
    build_identity,
    route_users,
    source_digest,
)
from fedshield.engines.local import InProcessTransport
from fedshield.run import run
from fedshield.server.protocol import run_jobs
from fedshield.task.determinism import configure_torch
from grid_fakes import InProcessGrid
from helpers import LOCAL_PER_CLIENT, job_params, tiny_config

USERS = tuple(range(100, 120))


def _pool(*node_ids: int) -> list[NodeInfo]:
    return [NodeInfo(node_id, None, "b") for node_id in node_ids]


# --- routing, a pure function -------------------------------------------------------------------


def test_pool_nodes_deal_the_users_round_robin_in_node_id_order():
    routes = route_users(USERS, _pool(9, 3), claimed=set())
    assert set(routes) == set(USERS)
    assert [routes[u] for u in USERS[:4]] == [3, 9, 3, 9]
    assert sorted(Counter(routes.values()).values()) == [10, 10]


def test_three_pool_nodes_share_twenty_users_within_one():
    loads = Counter(route_users(USERS, _pool(5, 7, 6), claimed=set()).values())
    assert max(loads.values()) - min(loads.values()) <= 1 and sum(loads.values()) == len(USERS)


def test_a_dedicated_node_serves_its_partition_and_the_newest_one_wins():
    nodes = [NodeInfo(40, 2, "b"), *_pool(1), NodeInfo(41, 2, "b")]  # 41 joined after 40: a restart
    routes = route_users(USERS, nodes, claimed={2})
    assert routes[USERS[2]] == 41
    assert all(routes[u] == 1 for i, u in enumerate(USERS) if i != 2)


def test_a_claimed_user_whose_node_is_gone_is_not_handed_to_a_pool_node():
    routes = route_users(USERS, _pool(1, 2), claimed={0, 5})
    assert USERS[0] not in routes and USERS[5] not in routes
    assert len(routes) == len(USERS) - 2


def test_without_pool_nodes_only_dedicated_users_are_routed():
    routes = route_users(USERS, [NodeInfo(7, 3, "b")], claimed={3})
    assert routes == {USERS[3]: 7}


# --- the build identity -------------------------------------------------------------------------


def test_the_source_digest_follows_every_source_and_config_file_and_ignores_caches(tmp_path):
    package = tmp_path / "fedshield"
    shutil.copytree(Path(fedshield.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_digest(package)
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "x.pyc").write_bytes(b"compiled")
    assert source_digest(package) == before
    config = package / "conf" / "config.yaml"
    config.write_text(config.read_text() + "\n# edited\n")
    assert source_digest(package) != before
    assert build_identity().startswith(f"{fedshield.__version__}+")


# --- discovery and the version check, over the real ClientApp -----------------------------------


def test_a_node_of_another_build_stops_the_run_at_discovery_naming_both_builds():
    grid = InProcessGrid()
    node = grid.start_node()
    directory = NodeDirectory(grid, USERS, timeout=5, build="0.0.1+another")  # type: ignore[arg-type]
    with pytest.raises(
        NodeVersionError,
        match=rf"SuperNode {node} runs fedshield {re.escape(build_identity())}, this ServerApp 0.0.1\+another",
    ):
        directory.discover()


def test_a_node_of_another_build_that_joins_later_is_never_used():
    grid = InProcessGrid()
    good = grid.start_node()
    directory = NodeDirectory(grid, USERS, timeout=5)  # type: ignore[arg-type]
    directory.discover()
    directory.build = "0.0.1+another"  # what a node installed from another checkout looks like from here
    late = grid.start_node()
    directory.refresh()
    assert late in directory.refused and set(directory.routes.values()) == {good}


def test_discovery_waits_for_min_nodes_and_gives_up_naming_the_setting():
    grid = InProcessGrid()
    grid.start_node()
    directory = NodeDirectory(grid, USERS, timeout=1, min_nodes=2)  # type: ignore[arg-type]
    with pytest.raises(NodeDiscoveryError, match=r"1 SuperNodes answered \(engine.min_nodes=2\) and 0 of 20 users"):
        directory.discover()


def test_dedicated_nodes_that_miss_a_partition_leave_its_user_without_a_node():
    grid = InProcessGrid()
    for partition in range(len(USERS) - 1):
        grid.start_node({"partition-id": partition})
    directory = NodeDirectory(grid, USERS, timeout=1)  # type: ignore[arg-type]
    with pytest.raises(NodeDiscoveryError, match=r"and 1 of 20 users have no node"):
        directory.discover()


# --- training over pool nodes -------------------------------------------------------------------

POOL_RUN = ["num_clients=20", "ensemble=flcert_d", "ensemble.num_groups=2", "num_rounds=3", "sample_fraction=1.0"]


def _grid_run(cfg, grid: InProcessGrid) -> dict:
    configure_torch(threads=1)
    return run(cfg, engine=GridEngine(grid, discovery_timeout=10))  # type: ignore[arg-type]


def _all_params(run_dir: Path, num_jobs: int) -> list[torch.Tensor]:
    return [job_params(run_dir, job_id) for job_id in range(num_jobs)]


@pytest.mark.slow
def test_two_pool_nodes_serving_twenty_clients_equal_the_local_engine_bit_for_bit(tmp_path):
    # Prepare
    grid = InProcessGrid()
    nodes = [grid.start_node(), grid.start_node()]

    # Execute
    _grid_run(tiny_config(tmp_path, "engine=flower", *POOL_RUN, name="pool"), grid)
    configure_torch(threads=1)
    run(tiny_config(tmp_path, *POOL_RUN, *LOCAL_PER_CLIENT, "engine.workers=1", name="local"))

    # Assert: every client trained every round, half on each node, one message per node and round,
    # and the models are the same
    trained = Counter(node for node, kind, _ in grid.delivered if kind == "train")
    assert trained == {nodes[0]: 30, nodes[1]: 30}
    assert Counter(node for node, kind in grid.messages if kind == "train") == {nodes[0]: 3, nodes[1]: 3}
    for pool, local in zip(_all_params(tmp_path / "pool", 2), _all_params(tmp_path / "local", 2), strict=True):
        assert torch.equal(pool, local)
    assert (tmp_path / "pool" / "votes.npy").read_bytes() == (tmp_path / "local" / "votes.npy").read_bytes()


class _Dropping:
    """engine=local's transport, but the train replies of ``dropped`` (round, user) pairs never come."""

    def __init__(self, transport: InProcessTransport, dropped: set[tuple[int, int]]) -> None:
        self.transport, self.dropped = transport, dropped

    def train(self, requests):
        replies = self.transport.train(requests)
        rounds = {r.key: r.server_round for r in requests}
        return {key: None if (rounds[key], key[1]) in self.dropped else reply for key, reply in replies.items()}

    def craft(self, requests):
        return self.transport.craft(requests)


def _train_round(messages: list[Message]) -> int | None:
    rounds = {m.content.config_records["config"]["round"] for m in messages if m.metadata.message_type == "train"}
    return int(rounds.pop()) if rounds else None  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_pool_node_that_dies_loses_one_round_of_its_users_and_a_restarted_node_takes_over(tmp_path):
    # Prepare: node A dies as round 2's messages go out; a restarted SuperNode (a new ID) joins then
    grid = InProcessGrid()
    a, b = grid.start_node(), grid.start_node()
    lost: set[tuple[int, int]] = set()
    restarted: list[int] = []

    def kill_a_in_round_2(grid: InProcessGrid, messages: list[Message]) -> None:
        if _train_round(messages) == 2 and a in grid.online:
            grid.stop_node(a)
            restarted.append(grid.start_node())
            for message in messages:
                if message.metadata.dst_node_id == a:
                    users = message.content.config_records["config"]["user-ids"]
                    lost.update((2, int(user)) for user in users)  # type: ignore[union-attr]

    grid.before_exchange = kill_a_in_round_2
    cfg = tiny_config(tmp_path, "engine=flower", *POOL_RUN, name="churn")

    # Execute
    _grid_run(cfg, grid)

    # Assert: round 2 misses A's ten users, rounds 1 and 3 have every reply; round 3 used B and the new node
    configure_torch(threads=1)
    experiment = build_experiment(tiny_config(tmp_path, *POOL_RUN, name="replay"))
    clients = len(experiment.jobs[0].client_ids)
    lost_in_job_0 = len({user for _, user in lost} & set(experiment.jobs[0].client_ids))
    rounds = json.loads((tmp_path / "churn" / "metrics.json").read_text())["rounds"]
    assert [(r["round"], r["replies"], r["missing"]) for r in rounds] == [
        (1, clients, 0),
        (2, clients - lost_in_job_0, lost_in_job_0),
        (3, clients, 0),
    ]
    assert len(lost) == 10 and lost_in_job_0 > 0
    round_3 = Counter(node for node, kind, _ in grid.delivered[-20:] if kind == "train")
    assert round_3 == {b: 10, restarted[0]: 10}
    states = run_jobs(experiment, list(experiment.jobs), _Dropping(InProcessTransport(experiment), lost))
    for state in states:
        assert torch.equal(job_params(tmp_path / "churn", state.job.job_id), state.params)


@pytest.mark.slow
def test_a_restarted_dedicated_node_rejoins_and_later_rounds_get_every_reply(tmp_path):
    # Prepare: one dedicated node per client; the node of partition 1 dies in round 2 and restarts
    grid = InProcessGrid()
    for partition in range(6):
        grid.start_node({"partition-id": partition})
    victim = grid.get_node_ids()[1]

    def restart_in_round_2(grid: InProcessGrid, messages: list[Message]) -> None:
        if _train_round(messages) == 2 and victim in grid.online:
            grid.stop_node(victim)
            grid.start_node({"partition-id": 1})

    grid.before_exchange = restart_in_round_2
    overrides = ["num_rounds=3", "sample_fraction=1.0"]

    # Execute
    _grid_run(tiny_config(tmp_path, "engine=flower", *overrides, name="restart"), grid)

    # Assert
    rounds = json.loads((tmp_path / "restart" / "metrics.json").read_text())["rounds"]
    assert [(r["round"], r["replies"], r["missing"]) for r in rounds] == [(1, 6, 0), (2, 5, 1), (3, 6, 0)]
    configure_torch(threads=1)
    experiment = build_experiment(tiny_config(tmp_path, *overrides, name="replay"))
    user_1 = experiment.federation.user_ids[1]
    (state,) = run_jobs(experiment, list(experiment.jobs), _Dropping(InProcessTransport(experiment), {(2, user_1)}))
    assert torch.equal(job_params(tmp_path / "restart"), state.params)


FLIP_RUN = [
    "num_rounds=3",
    "sample_fraction=1.0",
    "attack=backdoor",
    "attack.num_malicious=1",
    "defense=flip",
    "defense.inversion_steps=5",
    "defense.warm_inversion_steps=2",
]


@pytest.mark.slow
def test_flip_client_state_travels_with_users_that_change_pool_nodes(tmp_path):
    # Prepare: a new pool node joins every round, so the users are dealt anew each round
    grid = InProcessGrid()
    grid.start_node()

    def add_a_node(grid: InProcessGrid, messages: list[Message]) -> None:
        server_round = _train_round(messages)
        if server_round is not None and len(grid.online) < server_round:
            grid.start_node()

    grid.before_exchange = add_a_node

    # Execute
    _grid_run(tiny_config(tmp_path, "engine=flower", *FLIP_RUN, name="pool"), grid)
    configure_torch(threads=1)
    run(tiny_config(tmp_path, *FLIP_RUN, *LOCAL_PER_CLIENT, "engine.workers=1", name="local"))

    # Assert: users did move between nodes, and FLIP's warm starts saw the same state as in-process
    nodes_of_user: dict[int, set[int]] = {}
    for node, kind, user in grid.delivered:
        if kind == "train" and user is not None:
            nodes_of_user.setdefault(user, set()).add(node)
    assert any(len(nodes) > 1 for nodes in nodes_of_user.values())
    assert torch.equal(job_params(tmp_path / "pool"), job_params(tmp_path / "local"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dedicated", "pool"])
def test_full_knowledge_attackers_craft_over_the_grid_as_in_process(tmp_path, kind):
    # Prepare: Fang's Trim attack has a second phase, the malicious clients' crafting messages
    grid = InProcessGrid()
    for partition in range(6) if kind == "dedicated" else range(2):
        grid.start_node({"partition-id": partition} if kind == "dedicated" else {})
    attacked = ["num_rounds=2", "sample_fraction=1.0", "strategy=trimmed_mean", "attack=trim", "attack.num_malicious=2"]

    # Execute
    _grid_run(tiny_config(tmp_path, "engine=flower", *attacked, name="grid"), grid)
    configure_torch(threads=1)
    run(tiny_config(tmp_path, *attacked, *LOCAL_PER_CLIENT, "engine.workers=1", name="local"))

    # Assert
    crafted = [user for _, message_type, user in grid.delivered if message_type == "train.craft"]
    assert len(crafted) == 2 * 2, "each round, each malicious client crafts once"
    assert torch.equal(job_params(tmp_path / "grid"), job_params(tmp_path / "local"))
