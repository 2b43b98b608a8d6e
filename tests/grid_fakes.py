"""An in-process stand-in for a SuperLink with SuperNodes: the part of Flower's Grid that
:class:`~fedshield.engines.flower.grid.GridEngine` uses, delivering every message to the real
ClientApp with a per-node Flower ``Context``. Nodes can be started, stopped and restarted between
exchanges, as SuperNodes on real machines are."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedshield.engines.flower.client_app import app as client_app


class InProcessGrid:
    def __init__(self) -> None:
        # Flower stamps every new Message with the run of the process it is in (set by a real
        # ServerApp process); here one fake run serves every test of the session.
        for name, value in (("run_id", 1), ("node_id", SUPERLINK_NODE_ID), ("task_id", 1)):
            if getattr(TaskIdentity, f"_{name}") is None:
                setattr(TaskIdentity, name, value)
        self._ids = itertools.count(101)
        self.contexts: dict[int, Context] = {}
        self.online: set[int] = set()
        self.delivered: list[tuple[int, str, int | None]] = []  # (node, message type, user) per task
        self.messages: list[tuple[int, str]] = []  # (node, message type) per message
        # Called before each exchange with this grid: lets a test stop or start nodes mid-run.
        self.before_exchange: Callable[[InProcessGrid, list[Message]], None] | None = None

    def start_node(self, node_config: dict | None = None) -> int:
        """A new SuperNode process: a fresh node ID and empty node state."""
        node_id = next(self._ids)
        self.contexts[node_id] = Context(
            run_id=1, node_id=node_id, node_config=dict(node_config or {}), state=RecordDict(), run_config={}
        )
        self.online.add(node_id)
        return node_id

    def stop_node(self, node_id: int) -> None:
        self.online.discard(node_id)

    def get_node_ids(self) -> list[int]:
        return sorted(self.online)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if self.before_exchange is not None:
            self.before_exchange(self, messages)
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            node_id = message.metadata.dst_node_id
            if node_id not in self.online:  # what the SuperLink says after missed heartbeats
                error = Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Error: Node Unavailable")
                replies.append(Message(error, reply_to=message))
                continue
            kind = message.metadata.message_type
            self.messages.append((node_id, kind))
            config = message.content.config_records.get("config")
            users = list(config["user-ids"]) if config is not None and "user-ids" in config else [None]  # type: ignore[arg-type]
            self.delivered.extend((node_id, kind, user) for user in users)
            reply = client_app(message, self.contexts[node_id])
            reply.metadata.__dict__["_src_node_id"] = node_id
            replies.append(reply)
        return replies
