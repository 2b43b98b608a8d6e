"""A real Flower federation on 127.0.0.1: SuperLink, SuperNodes and ``flwr run .`` as processes.

The ServerApp runs in its own ``flwr-serverapp`` process under the SuperLink, every message starts
a ``flwr-clientapp`` process under a SuperNode, and all of them talk over local sockets. The job
must still equal the in-process engine's bit for bit; and a SuperNode that dies mid-run must not
stop the run: its replies count as missing, the rest of the round goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from fedshield.config import build_experiment, compose_config
from fedshield.engines.local import InProcessTransport
from fedshield.server.protocol import run_jobs
from fedshield.task.determinism import configure_torch
from flower_processes import (
    NUM_NODES,
    TINY,
    Federation,
    check_tiny_run_equals_the_local_engine,
    digest,
    running_federation,
    summary_accuracy,
)
from helpers import job_params

pytestmark = [pytest.mark.flower, pytest.mark.slow]


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Iterator[Federation]:
    """A SuperLink and NUM_NODES SuperNodes on 127.0.0.1 over --insecure, stopped (by PID) at the end."""
    with running_federation(tmp_path_factory.mktemp("federation"), num_nodes=NUM_NODES) as running:
        yield running


def test_flwr_run_over_processes_equals_the_local_engine_bit_for_bit(federation, tmp_path):
    check_tiny_run_equals_the_local_engine(federation, tmp_path)


class _Vanishing:
    """An in-process transport whose client ``user_id`` gives no reply from ``from_round`` on."""

    def __init__(self, transport, *, user_id: int, from_round: int) -> None:
        self.transport, self.user_id, self.from_round = transport, user_id, from_round

    def _drop(self, replies: dict, requests: list) -> dict:
        rounds = {(r.job.job_id, r.user_id): r.server_round for r in requests}
        return {
            key: None if key[1] == self.user_id and rounds[key] >= self.from_round else reply
            for key, reply in replies.items()
        }

    def train(self, requests):
        return self._drop(self.transport.train(requests), requests)

    def craft(self, requests):
        return self._drop(self.transport.craft(requests), requests)


def test_supernode_killed_mid_run_leaves_its_replies_missing_and_the_run_finishes(federation, tmp_path):
    """Runs last in this module: it kills a SuperNode of the shared federation."""
    # Prepare
    victim = NUM_NODES - 1
    output_dir = tmp_path / "federation"

    # Execute: kill the victim as soon as its round-1 reply is on the SuperLink
    run_id = federation.submit_and_kill_after_its_reply(victim, TINY, output_dir)
    federation.wait(run_id)

    # Assert: round 2 aggregated the replies that came, and is what it would be had the victim not been sampled
    summary_accuracy(output_dir)
    rounds = json.loads((output_dir / "metrics.json").read_text())["rounds"]
    assert [(r["round"], r["replies"], r["missing"]) for r in rounds] == [(1, NUM_NODES, 0), (2, NUM_NODES - 1, 1)]
    assert "Node Unavailable" in federation.server_log(run_id), "the ServerApp logs the error reply"
    configure_torch(threads=1)
    experiment = build_experiment(compose_config(TINY, output_dir=tmp_path / "replay"))
    victim_user = experiment.federation.user_ids[victim]
    transport = _Vanishing(InProcessTransport(experiment), user_id=victim_user, from_round=2)
    (state,) = run_jobs(experiment, [experiment.jobs[0]], transport)
    assert digest(job_params(output_dir)) == digest(state.params)
