"""Carry the round protocol's client work over a Flower Grid (Message API)."""

from __future__ import annotations

import logging

from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedshield.engines.flower.nodes import NodeDirectory
from fedshield.engines.flower.records import (
    USER_ERROR_KEY,
    CraftTask,
    TrainTask,
    craft_content,
    scalars,
    task_replies,
    train_content,
)
from fedshield.errors import UserError
from fedshield.server.protocol import Replies
from fedshield.task.defense import ClientState
from fedshield.task.messages import CraftRequest, ReplyKey, TrainRequest

logger = logging.getLogger(__name__)


class ClientUserError(UserError):
    """A client found a mistake in the config that only its worker can see (``client.device=cuda``
    on a worker without CUDA): every client would fail alike, so the run stops with its message."""


class FlowerTransport:
    """One ``send_and_receive`` per phase per round for all jobs of a wave, with one message per
    SuperNode carrying every task routed to it (:class:`NodeDirectory`, asked again before every
    exchange): a pool node serving many users starts one ClientApp process per round, not one
    per user."""

    def __init__(self, grid: Grid, nodes: NodeDirectory, experiment_yaml: str, *, timeout: float | None = None) -> None:
        self.grid = grid
        self.nodes = nodes
        self.experiment_yaml = experiment_yaml
        self.timeout = timeout
        self.failures = 0
        # Client state of users served by pool nodes, which may change from round to round.
        self.client_states: dict[ReplyKey, ClientState] = {}

    def _by_node(self, keys: list[ReplyKey]) -> dict[int, list[int]]:
        """Indices into ``keys`` per node, in order; users no node can serve now count as failed."""
        self.nodes.refresh()
        by_node: dict[int, list[int]] = {}
        for index, (job_id, user_id) in enumerate(keys):
            node_id = self.nodes.node_of(user_id)
            if node_id is None:
                self.failures += 1
                logger.warning("no SuperNode serves user %s now; job %s goes on without it", user_id, job_id)
            else:
                by_node.setdefault(node_id, []).append(index)
        return by_node

    def _exchange(self, messages: dict[int, tuple[Message, list[ReplyKey]]], expected: list[ReplyKey]) -> Replies:
        replies: Replies = {key: None for key in expected}
        sent = [message for message, _ in messages.values()]
        # Message ID -> (node, its tasks' keys); the IDs are set when the messages are pushed.
        sent_to: dict[str, tuple[int, list[ReplyKey]]] = {}
        for reply in self.grid.send_and_receive(sent, timeout=self.timeout):
            if not sent_to:
                sent_to = {message.metadata.message_id: (node, keys) for node, (message, keys) in messages.items()}
            if reply.has_error():
                # A vanished or failing node: Flower's failure handling gives an error reply (from
                # the SuperLink, so the node is named from the message sent); the round goes on
                # without its users (logged and counted).
                node, lost = sent_to.get(reply.metadata.reply_to_message_id, (reply.metadata.src_node_id, []))
                self.failures += max(1, len(lost))
                logger.warning("no reply from node %s for %d tasks: %s", node, len(lost), reply.error.reason)
                if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
                    self.nodes.drop(node)
                continue
            if USER_ERROR_KEY in reply.content:
                raise ClientUserError(str(scalars(reply.content, USER_ERROR_KEY)["message"]))
            for task in task_replies(reply.content):
                key = (task.job_id, task.user_id)
                replies[key] = task.reply
                if task.state is not None:
                    self.client_states[key] = task.state
        return replies

    def train(self, requests: list[TrainRequest]) -> Replies:
        keys = [r.key for r in requests]
        messages = {}
        for node_id, indices in self._by_node(keys).items():
            pool = self.nodes.is_pool(node_id)
            tasks = [
                TrainTask(
                    r.job.job_id,
                    r.user_id,
                    r.num_sampled,
                    r.global_params,
                    self.client_states.get(r.key, {}) if pool else None,
                )
                for r in (requests[i] for i in indices)
            ]
            round_ = requests[indices[0]].server_round
            content = train_content(self.experiment_yaml, round_, tasks)
            message = Message(content, dst_node_id=node_id, message_type="train")
            messages[node_id] = (message, [keys[i] for i in indices])
        return self._exchange(messages, keys)

    def craft(self, requests: list[CraftRequest]) -> Replies:
        keys = [r.key for r in requests]
        messages = {}
        for node_id, indices in self._by_node(keys).items():
            tasks = [
                CraftTask(r.job.job_id, r.user_id, r.sampled, r.global_params, r.updates, r.weights)
                for r in (requests[i] for i in indices)
            ]
            content = craft_content(self.experiment_yaml, requests[indices[0]].server_round, tasks)
            message = Message(content, dst_node_id=node_id, message_type="train.craft")
            messages[node_id] = (message, [keys[i] for i in indices])
        return self._exchange(messages, keys)
