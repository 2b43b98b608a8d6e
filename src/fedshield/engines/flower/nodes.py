"""Which SuperNode serves which user: discovery, the version check, and routing that follows nodes
as they come and go.

A SuperNode is one of two kinds, by its node config:

* *dedicated* (``partition-id=p``): it holds user ``user_ids[p]`` only (the simulation's virtual
  nodes, or a real client with its own data). Its user's per-job client state (FLIP's caches)
  stays on the node, in ``context.state``.
* *pool* (no ``partition-id``): it holds the whole dataset and serves any user that no
  dedicated node has claimed; a handful of pool nodes serve hundreds of users. Which pool node
  serves a user may change from round to round, so the user's client state travels with its
  messages (the server keeps it between rounds, as engine=local does). The result is then the
  same whatever the placement: each message names its user, and the work is a pure function of
  the message.

Before every exchange the directory asks the SuperLink which nodes are online, queries the new
ones (kind and fedshield build), drops the ones gone, and deals the pool users again. A restarted
SuperNode registers under a new node ID, answers the query and is used from the next exchange on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

import fedshield
from fedshield.engines.flower.records import as_int, scalars
from fedshield.errors import UserError

logger = logging.getLogger(__name__)

BUILD_KEY = "fedshield-build"
PARTITION_KEY = "partition-id"
# Seconds a node that joins mid-run has to answer the query, else it is asked again before the
# next exchange. At discovery the whole remaining discovery_timeout is given: a simulation's
# 1,000 virtual nodes answer through a few Ray actors, which takes tens of seconds.
QUERY_TIMEOUT = 30.0
_POLL_SECONDS = 0.5


class NodeDiscoveryError(RuntimeError):
    pass


class NodeVersionError(UserError):
    """A SuperNode runs another fedshield build than the ServerApp: their results would not agree."""


def source_digest(package: Path) -> str:
    """SHA-256 prefix over the package's Python sources and YAML configs (path and bytes, in path
    order; caches ignored)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.suffix in {".py", ".yaml"} and "__pycache__" not in path.parts:
            digest.update(path.relative_to(package).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@lru_cache(maxsize=1)
def build_identity() -> str:
    """``<version>+<digest>`` of the installed fedshield: two installs agree only when they would
    compute the same thing (a checkout with local edits differs from the release of its version)."""
    return f"{fedshield.__version__}+{source_digest(Path(fedshield.__file__).resolve().parent)}"


@dataclass(frozen=True)
class NodeInfo:
    node_id: int
    partition: int | None  # None: a pool node, which serves any unclaimed user
    build: str


def route_users(user_ids: Sequence[int], nodes: Sequence[NodeInfo], claimed: set[int]) -> dict[int, int]:
    """The node of each servable user: ``user_ids[p]`` goes to the newest online dedicated node of
    partition p; a user whose partition no dedicated node ever claimed (``claimed``) is dealt
    round-robin over the pool nodes in node-ID order. A claimed user whose node is gone is not
    routed: a pool node does not stand in for a client that has its own node."""
    dedicated = {node.partition: node.node_id for node in nodes if node.partition is not None}  # newest wins
    pool = sorted(node.node_id for node in nodes if node.partition is None)
    routes = {user_ids[p]: node_id for p, node_id in dedicated.items()}
    unclaimed = [user for p, user in enumerate(user_ids) if p not in claimed]
    if pool:
        routes.update({user: pool[i % len(pool)] for i, user in enumerate(unclaimed)})
    return routes


class NodeDirectory:
    """The online SuperNodes of a run and the node each user is routed to."""

    def __init__(
        self, grid: Grid, user_ids: Sequence[int], *, timeout: float = 300.0, min_nodes: int = 1, build: str = ""
    ) -> None:
        self.grid = grid
        self.user_ids = tuple(user_ids)
        self.timeout = timeout
        self.min_nodes = min_nodes
        self.build = build or build_identity()
        self.nodes: dict[int, NodeInfo] = {}  # online, usable; insertion order = discovery order
        self.refused: set[int] = set()  # another build, or declared unavailable: never used again
        self.claimed: set[int] = set()  # partitions a dedicated node ever served
        self.routes: dict[int, int] = {}

    def discover(self) -> None:
        """Wait until every user can be served and ``min_nodes`` nodes answered; a node of another
        fedshield build stops the run here (before any training)."""
        deadline = time.monotonic() + self.timeout
        while True:
            self._update(strict=True, timeout=max(1.0, deadline - time.monotonic()))
            unserved = [user for user in self.user_ids if user not in self.routes]
            if not unserved and len(self.nodes) >= self.min_nodes:
                kinds = self.kinds()
                logger.info("%d SuperNodes serve %d users (%s)", len(self.nodes), len(self.user_ids), kinds)
                return
            if time.monotonic() > deadline:
                raise NodeDiscoveryError(
                    f"after {self.timeout:.0f} s, {len(self.nodes)} SuperNodes answered (engine.min_nodes="
                    f"{self.min_nodes}) and {len(unserved)} of {len(self.user_ids)} users have no node "
                    "(start SuperNodes with partition-id=0..n-1 in their node config, one per user, "
                    "or pool SuperNodes without a partition-id, which serve any user)"
                )
            time.sleep(_POLL_SECONDS)

    def refresh(self) -> None:
        """Follow the nodes that left or joined since the last exchange; route the users again."""
        self._update(strict=False, timeout=QUERY_TIMEOUT)

    def node_of(self, user_id: int) -> int | None:
        return self.routes.get(user_id)

    def is_pool(self, node_id: int) -> bool:
        return self.nodes[node_id].partition is None

    def drop(self, node_id: int) -> None:
        """The SuperLink declared ``node_id`` unavailable (missed heartbeats): a restarted SuperNode
        comes back under a new ID, so this one is never used again."""
        if self.nodes.pop(node_id, None) is not None:
            logger.warning("SuperNode %s is unavailable; its users are routed to other nodes", node_id)
        self.refused.add(node_id)
        self._route()

    def kinds(self) -> str:
        pool = sum(node.partition is None for node in self.nodes.values())
        return f"{len(self.nodes) - pool} dedicated, {pool} pool"

    def _update(self, *, strict: bool, timeout: float) -> None:
        online = set(self.grid.get_node_ids())
        for node_id in [n for n in self.nodes if n not in online]:
            logger.warning("SuperNode %s left the federation", node_id)
            del self.nodes[node_id]
        new = sorted(online - self.nodes.keys() - self.refused)
        if new:
            for info in self._query(new, timeout=timeout):
                self._admit(info, strict=strict)
        self._route()

    def _admit(self, info: NodeInfo, *, strict: bool) -> None:
        if info.build != self.build:
            said = (
                f"SuperNode {info.node_id} runs fedshield {info.build or '(unknown build)'}, "
                f"this ServerApp {self.build}: install the same fedshield on every node"
            )
            if strict:
                raise NodeVersionError(said)
            logger.warning("%s; the node is not used", said)
            self.refused.add(info.node_id)
            return
        if info.partition is not None and not 0 <= info.partition < len(self.user_ids):
            raise NodeDiscoveryError(
                f"SuperNode {info.node_id} has partition-id {info.partition} outside [0, {len(self.user_ids)})"
            )
        if info.partition is not None:
            self.claimed.add(info.partition)
        self.nodes[info.node_id] = info

    def _query(self, node_ids: Iterable[int], *, timeout: float) -> list[NodeInfo]:
        queries = [Message(RecordDict(), dst_node_id=node_id, message_type="query") for node_id in node_ids]
        answered = []
        for reply in self.grid.send_and_receive(queries, timeout=timeout):
            if reply.has_error():
                logger.warning(
                    "SuperNode %s did not answer the query: %s", reply.metadata.src_node_id, reply.error.reason
                )
                continue
            node = scalars(reply.content, "node")
            partition = as_int(node[PARTITION_KEY]) if PARTITION_KEY in node else None
            answered.append(NodeInfo(reply.metadata.src_node_id, partition, str(node.get(BUILD_KEY, ""))))
        return sorted(answered, key=lambda info: info.node_id)

    def _route(self) -> None:
        self.routes = route_users(self.user_ids, list(self.nodes.values()), self.claimed)
