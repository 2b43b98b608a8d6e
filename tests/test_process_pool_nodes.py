"""Pool SuperNodes as processes on 127.0.0.1: two ``flower-supernode`` processes without a
``partition-id`` serve a federation of twenty clients, equal to the in-process engine bit for
bit; a pool node killed mid-run and started again rejoins, and the later rounds get every reply.
(tests/test_supernode_routing.py checks the same routing in-process, with exact replays.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedshield.config import compose_config
from fedshield.run import run
from flower_processes import RUN_TIMEOUT, Federation, running_federation
from helpers import LOCAL_PER_CLIENT, job_params

pytestmark = [pytest.mark.flower, pytest.mark.slow]

NUM_NODES = 2
NUM_CLIENTS = 20
POOL = [
    "dataset=mnist5k",
    "model=logistic",
    f"num_clients={NUM_CLIENTS}",
    "ensemble=flcert_d",
    "ensemble.num_groups=2",
    "num_rounds=3",
    "sample_fraction=1.0",
    "client.local_steps=3",
    "client.batch_size=16",
]


@pytest.fixture(scope="module")
def pool_federation(tmp_path_factory) -> Iterator[Federation]:
    """A SuperLink and two pool SuperNodes (no node config) on 127.0.0.1, stopped by PID."""
    with running_federation(tmp_path_factory.mktemp("pool-federation"), num_nodes=NUM_NODES, pool=True) as federation:
        yield federation


def _rounds(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "metrics.json").read_text())["rounds"]


def test_two_pool_supernodes_serve_twenty_clients_equal_to_the_local_engine(pool_federation, tmp_path):
    # Prepare
    overrides = [*POOL, "engine=flower", f"engine.min_nodes={NUM_NODES}"]
    sent_before = [pool_federation.train_replies_sent(i) for i in range(NUM_NODES)]

    # Execute
    started = time.monotonic()
    pool_federation.wait(pool_federation.submit(overrides, tmp_path / "pool"))
    seconds = time.monotonic() - started
    run(compose_config([*POOL, *LOCAL_PER_CLIENT, "engine.workers=1"], output_dir=tmp_path / "local"))

    # Assert: each node answered one message a round (its ten clients' tasks), and every group
    # model is the same
    sent = [pool_federation.train_replies_sent(i) - sent_before[i] for i in range(NUM_NODES)]
    assert sent == [3] * NUM_NODES
    assert [(r["replies"], r["missing"]) for r in _rounds(tmp_path / "pool")] == [(10, 0)] * 3
    for job_id in range(2):
        assert torch.equal(job_params(tmp_path / "pool", job_id), job_params(tmp_path / "local", job_id))
    assert (tmp_path / "pool" / "votes.npy").read_bytes() == (tmp_path / "local" / "votes.npy").read_bytes()
    per_round = [round(r["wall_time"], 1) for r in _rounds(tmp_path / "pool")]
    print(f"\n2 pool SuperNodes, {NUM_CLIENTS} clients: flwr run {seconds:.0f} s, per round {per_round} s")


def test_a_killed_pool_supernode_restarted_mid_run_rejoins_and_later_rounds_get_every_reply(pool_federation, tmp_path):
    """Runs last in this module: it kills and restarts a SuperNode of the shared federation."""
    # Prepare
    victim = NUM_NODES - 1
    overrides = [*POOL, "num_rounds=4", "engine=flower", f"engine.min_nodes={NUM_NODES}"]

    # Execute: kill the victim once it has sent its round-1 reply, then start it again
    run_id = pool_federation.submit_and_kill_after_its_reply(victim, overrides, tmp_path / "churn")
    pool_federation.restart_node(victim)
    sent_by_restarted = pool_federation.train_replies_sent(victim)
    pool_federation.wait(run_id, timeout=2 * RUN_TIMEOUT)

    # Assert: the replies lost are those sent to the dead node; the last rounds are complete and
    # the restarted node served some of them
    rounds = _rounds(tmp_path / "churn")
    assert (rounds[0]["replies"], rounds[0]["missing"]) == (10, 0)
    assert sum(r["missing"] for r in rounds) > 0, "the dead node's replies are missing"
    assert (rounds[-1]["replies"], rounds[-1]["missing"]) == (10, 0)
    assert pool_federation.train_replies_sent(victim) > sent_by_restarted
    print(f"\nrounds (replies, missing, s): {[(r['replies'], r['missing'], round(r['wall_time'])) for r in rounds]}")
