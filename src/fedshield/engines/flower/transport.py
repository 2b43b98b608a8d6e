"""Carry the round protocol's client work over a Flower Grid (Message API)."""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedshield.engines.flower.nodes import NodeDirectory
from fedshield.engines.flower.records import (
    CLIENT_STATE_KEY,
    EXPERIMENT_KEY,
    USER_ERROR_KEY,
    array_record,
    as_float,
    as_int,
    record_tensor,
    record_to_state,
    reply_diagnostics,
    scalars,
    state_to_record,
    tensor_record,
)
from fedshield.errors import UserError
from fedshield.server.protocol import Replies
from fedshield.task.defense import ClientState
from fedshield.task.messages import ClientReply, CraftRequest, ReplyKey, TrainRequest

logger = logging.getLogger(__name__)


class ClientUserError(UserError):
    """A client found a mistake in the config that only its worker can see (``client.device=cuda``
    on a worker without CUDA): every client would fail alike, so the run stops with its message."""


class FlowerTransport:
    """One ``send_and_receive`` per phase per round, for all jobs of a wave at once, each message
    to the node :class:`NodeDirectory` routes its user to (asked again before every exchange)."""

    def __init__(self, grid: Grid, nodes: NodeDirectory, experiment_yaml: str, *, timeout: float | None = None) -> None:
        self.grid = grid
        self.nodes = nodes
        self.experiment_yaml = experiment_yaml
        self.timeout = timeout
        self.failures = 0
        # Client state of users served by pool nodes, which may change from round to round.
        self.client_states: dict[ReplyKey, ClientState] = {}

    def _config(self, job_id: int, user_id: int, server_round: int, **extra) -> ConfigRecord:
        return ConfigRecord(
            {EXPERIMENT_KEY: self.experiment_yaml, "job-id": job_id, "user-id": user_id, "round": server_round, **extra}
        )

    def _route(self, keys: list[ReplyKey]) -> dict[ReplyKey, int]:
        """The node of each request's user; users no node can serve now count as failed replies."""
        self.nodes.refresh()
        routed = {}
        for key in keys:
            node_id = self.nodes.node_of(key[1])
            if node_id is None:
                self.failures += 1
                logger.warning("no SuperNode serves user %s now; job %s goes on without it", key[1], key[0])
            else:
                routed[key] = node_id
        return routed

    def _exchange(self, messages: list[Message], expected: list[ReplyKey]) -> Replies:
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
                if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
                    self.nodes.drop(node)
                continue
            if USER_ERROR_KEY in reply.content:
                raise ClientUserError(str(scalars(reply.content, USER_ERROR_KEY)["message"]))
            who = scalars(reply.content, "who")
            key = (as_int(who["job-id"]), as_int(who["user-id"]))
            metrics = scalars(reply.content, "metrics")
            replies[key] = ClientReply(
                record_tensor(array_record(reply.content, "update"), "update"),
                as_int(metrics["num-examples"]),
                as_float(metrics["loss"]),
                reply_diagnostics(metrics),
            )
            if CLIENT_STATE_KEY in reply.content:
                self.client_states[key] = record_to_state(array_record(reply.content, CLIENT_STATE_KEY))
        return replies

    def _content(self, key: ReplyKey, node_id: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        content = RecordDict({"arrays": arrays, "config": config})
        if self.nodes.is_pool(node_id):
            content[CLIENT_STATE_KEY] = state_to_record(self.client_states.get(key, {}))
        return content

    def train(self, requests: list[TrainRequest]) -> Replies:
        routes = self._route([r.key for r in requests])
        messages = [
            Message(
                self._content(
                    r.key,
                    routes[r.key],
                    tensor_record(params=r.global_params),
                    self._config(r.job.job_id, r.user_id, r.server_round, **{"num-sampled": r.num_sampled}),
                ),
                dst_node_id=routes[r.key],
                message_type="train",
            )
            for r in requests
            if r.key in routes
        ]
        return self._exchange(messages, [r.key for r in requests])

    def craft(self, requests: list[CraftRequest]) -> Replies:
        routes = self._route([r.key for r in requests])
        messages = [
            Message(
                RecordDict(
                    {
                        "arrays": tensor_record(params=r.global_params, updates=r.updates, weights=r.weights),
                        "config": self._config(r.job.job_id, r.user_id, r.server_round, sampled=list(r.sampled)),
                    }
                ),
                dst_node_id=routes[r.key],
                message_type="train.craft",
            )
            for r in requests
            if r.key in routes
        ]
        return self._exchange(messages, [r.key for r in requests])
