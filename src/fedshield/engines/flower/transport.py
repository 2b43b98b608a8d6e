"""Carry the round protocol's client work over a Flower Grid (Message API)."""

from __future__ import annotations

import logging
import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedshield.engines.flower.records import (
    EXPERIMENT_KEY,
    USER_ERROR_KEY,
    array_record,
    as_float,
    as_int,
    record_tensor,
    reply_diagnostics,
    scalars,
    tensor_record,
)
from fedshield.errors import UserError
from fedshield.server.protocol import Replies
from fedshield.task.messages import ClientReply, CraftRequest, TrainRequest

logger = logging.getLogger(__name__)


class NodeDiscoveryError(RuntimeError):
    pass


class ClientUserError(UserError):
    """A client found a mistake in the config that only its worker can see (``client.device=cuda``
    on a worker without CUDA): every client would fail alike, so the run stops with its message."""


def discover_nodes(grid: Grid, user_ids: tuple[int, ...], *, timeout: float = 300.0) -> dict[int, int]:
    """Map each user ID to the node that holds its partition (asks every node its partition-id)."""
    deadline = time.monotonic() + timeout
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < len(user_ids):
        if time.monotonic() > deadline:
            raise NodeDiscoveryError(f"only {len(node_ids)} of {len(user_ids)} SuperNodes connected in {timeout:.0f} s")
        time.sleep(0.5)
        node_ids = list(grid.get_node_ids())
    queries = [Message(RecordDict(), dst_node_id=node_id, message_type="query") for node_id in node_ids]
    node_of_user: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.has_error():
            logger.warning("node %s did not answer the partition query", reply.metadata.src_node_id)
            continue
        partition = as_int(scalars(reply.content, "node")["partition-id"])
        if not 0 <= partition < len(user_ids):
            raise NodeDiscoveryError(
                f"node {reply.metadata.src_node_id} reports partition-id {partition} outside [0, {len(user_ids)})"
            )
        node_of_user[user_ids[partition]] = reply.metadata.src_node_id
    missing = len(user_ids) - len(node_of_user)
    if missing:
        raise NodeDiscoveryError(
            f"{missing} partitions have no SuperNode (need one node per client, partition-id 0..n-1)"
        )
    return node_of_user


class FlowerTransport:
    """One ``send_and_receive`` per phase per round, for all jobs of a wave at once."""

    def __init__(
        self, grid: Grid, node_of_user: dict[int, int], experiment_yaml: str, *, timeout: float | None = None
    ) -> None:
        self.grid = grid
        self.node_of_user = node_of_user
        self.experiment_yaml = experiment_yaml
        self.timeout = timeout
        self.failures = 0

    def _config(self, job_id: int, user_id: int, server_round: int, **extra) -> ConfigRecord:
        return ConfigRecord(
            {EXPERIMENT_KEY: self.experiment_yaml, "job-id": job_id, "user-id": user_id, "round": server_round, **extra}
        )

    def _exchange(self, messages: list[Message], expected: list[tuple[int, int]]) -> Replies:
        replies: Replies = {key: None for key in expected}
        # Error replies come from the SuperLink itself, so name the node from the message sent.
        destination: dict[str, int] = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            if not destination:
                destination = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
            if reply.has_error():
                # A vanished or failing client: Flower's failure handling gives an error reply;
                # the round goes on without it (logged and counted).
                self.failures += 1
                node = destination.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
                logger.warning("no reply from node %s: %s", node, reply.error.reason)
                continue
            if USER_ERROR_KEY in reply.content:
                raise ClientUserError(str(scalars(reply.content, USER_ERROR_KEY)["message"]))
            who = scalars(reply.content, "who")
            metrics = scalars(reply.content, "metrics")
            replies[(as_int(who["job-id"]), as_int(who["user-id"]))] = ClientReply(
                record_tensor(array_record(reply.content, "update"), "update"),
                as_int(metrics["num-examples"]),
                as_float(metrics["loss"]),
                reply_diagnostics(metrics),
            )
        return replies

    def train(self, requests: list[TrainRequest]) -> Replies:
        messages = [
            Message(
                RecordDict(
                    {
                        "arrays": tensor_record(params=r.global_params),
                        "config": self._config(
                            r.job.job_id, r.user_id, r.server_round, **{"num-sampled": r.num_sampled}
                        ),
                    }
                ),
                dst_node_id=self.node_of_user[r.user_id],
                message_type="train",
            )
            for r in requests
        ]
        return self._exchange(messages, [(r.job.job_id, r.user_id) for r in requests])

    def craft(self, requests: list[CraftRequest]) -> Replies:
        messages = [
            Message(
                RecordDict(
                    {
                        "arrays": tensor_record(params=r.global_params, updates=r.updates, weights=r.weights),
                        "config": self._config(r.job.job_id, r.user_id, r.server_round, sampled=list(r.sampled)),
                    }
                ),
                dst_node_id=self.node_of_user[r.user_id],
                message_type="train.craft",
            )
            for r in requests
        ]
        return self._exchange(messages, [(r.job.job_id, r.user_id) for r in requests])
