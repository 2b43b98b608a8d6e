"""Any :class:`~fedshield.rules.base.AggregationRule` as a plain Flower (Message API) strategy.

:class:`RuleStrategy` is Flower's ``FedAvg`` with ``aggregate_train`` replaced: it turns each
reply's ArrayRecord into an update relative to the global arrays sent in ``configure_train``,
screens the updates with the project policy (:mod:`fedshield.rules.screening`), aggregates
them with the rule and returns global + aggregate. Only floating-point arrays are aggregated;
integer arrays (e.g. BatchNorm's ``num_batches_tracked``) keep their global values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency
from flwr.supercore import log
from torch import Tensor

from fedshield.rules.base import AggregationRule
from fedshield.rules.errors import AggregationError
from fedshield.rules.screening import aggregate_screened, screen_updates

logger = logging.getLogger(__name__)


def _is_floating(array: Array) -> bool:
    return bool(np.issubdtype(np.dtype(array.dtype), np.floating))


def flatten_arrays(arrays: ArrayRecord, *, reference: ArrayRecord) -> np.ndarray:
    """Concatenate the arrays of ``arrays`` that are floating in ``reference``, in its key order.

    Each array is cast to the reference array's dtype, so the result has the floating dtype
    of ``reference`` (its numpy result type).

    Raises
    ------
    ValueError
        If the keys differ from ``reference``'s, a shape differs, or an array that is floating
        in ``reference`` is not floating in ``arrays``.
    """
    if list(arrays.keys()) != list(reference.keys()):
        raise ValueError(f"array keys {list(arrays.keys())} differ from {list(reference.keys())}")
    pieces = []
    for key, expected in reference.items():
        if not _is_floating(expected):
            continue
        received = arrays[key]
        if tuple(received.shape) != tuple(expected.shape):
            raise ValueError(f"array {key!r} has shape {received.shape}, expected {expected.shape}")
        if not _is_floating(received):
            raise ValueError(f"array {key!r} has non-floating dtype {received.dtype}")
        with np.errstate(over="ignore"):  # float64 -> float32 overflow becomes inf, then rejected
            pieces.append(received.numpy().astype(expected.dtype, copy=False).ravel())
    if not pieces:
        raise ValueError("reference has no floating-point arrays to aggregate")
    return np.concatenate(pieces)


def unflatten_arrays(vector: np.ndarray, *, reference: ArrayRecord) -> ArrayRecord:
    """Inverse of :func:`flatten_arrays`: the floating arrays from ``vector``, the rest copied."""
    arrays = {}
    offset = 0
    for key, expected in reference.items():
        values = expected.numpy()
        if _is_floating(expected):
            piece = vector[offset : offset + values.size]
            values = piece.reshape(values.shape).astype(values.dtype)
            offset += values.size
        arrays[key] = Array(np.ascontiguousarray(values))
    if offset != vector.size:
        raise ValueError(f"vector has {vector.size} entries, reference needs {offset}")
    return ArrayRecord(arrays)


def _read_reply(content: RecordDict, *, reference: ArrayRecord, weighted_by_key: str) -> tuple[np.ndarray, float]:
    """The flattened arrays and the sample count of one reply; ValueError says why not."""
    array_records = list(content.array_records.values())
    if len(array_records) != 1:
        raise ValueError(f"reply has {len(array_records)} ArrayRecords, expected 1")
    counts = [record[weighted_by_key] for record in content.metric_records.values() if weighted_by_key in record]
    if len(counts) != 1 or not isinstance(counts[0], int | float):
        raise ValueError(f"reply needs exactly one numeric {weighted_by_key!r} metric")
    count = float(counts[0])
    if not (math.isfinite(count) and count > 0):
        raise ValueError(f"{weighted_by_key!r} must be finite and > 0; got {count}")
    return flatten_arrays(array_records[0], reference=reference), count


class RuleStrategy(FlowerFedAvg):
    """Flower ``FedAvg`` whose training aggregation is one of our rules, after screening.

    Parameters
    ----------
    rule : AggregationRule
        The aggregation rule; one instance per Flower run (FoolsGold keeps state by node id).
    max_norm : float
        Largest admissible L2 norm of a client update (see :func:`screen_updates`).
    server_update_fn : callable or None
        ``(server_round, global_arrays) -> Tensor`` returning the server's flattened update on
        its root data (ordered like :func:`flatten_arrays`); required if
        ``rule.requires_server_update`` (FLTrust).
    **fedavg_options
        Passed to Flower's ``FedAvg`` (``fraction_train``, ``weighted_by_key``, ...);
        ``min_train_nodes`` defaults to ``max(2, rule.min_clients())``.
    """

    def __init__(
        self,
        rule: AggregationRule,
        *,
        max_norm: float = math.inf,
        server_update_fn: Callable[[int, ArrayRecord], Tensor] | None = None,
        **fedavg_options: Any,
    ) -> None:
        fedavg_options.setdefault("min_train_nodes", max(2, rule.min_clients()))
        super().__init__(**fedavg_options)
        if rule.requires_server_update and server_update_fn is None:
            raise ValueError(f"rule {rule.name!r} needs server_update_fn; got None")
        self.rule = rule
        self.max_norm = max_norm
        self.server_update_fn = server_update_fn
        self.current_arrays: ArrayRecord | None = None

    def summary(self) -> None:
        """Log the rule and the norm bound, then Flower's FedAvg summary."""
        log(INFO, "\t├──> RuleStrategy: %r, max_norm=%s", self.rule, self.max_norm)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays, then sample and message nodes as ``FedAvg`` does."""
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies, aggregate their updates with the rule, return the new arrays.

        Returns ``(None, metrics)`` (Flower keeps the global model) when too few replies
        survive screening for the rule's precondition. ``metrics["num-rejected"]`` counts the
        dropped replies; the clients' own metrics are averaged over the kept replies.
        """
        if self.current_arrays is None:
            raise AggregationError("aggregate_train called before configure_train")
        reference = self.current_arrays
        global_vector = flatten_arrays(reference, reference=reference)
        valid_replies, _ = self._check_and_log_replies(replies, is_train=True, validate=False)

        candidates, node_ids, weights_by_id, contents_by_id, rejected = [], [], {}, {}, 0
        for message in valid_replies:
            node_id = message.metadata.src_node_id
            try:
                if node_id in weights_by_id:
                    raise ValueError("second reply from the same node in this round")
                flat, count = _read_reply(message.content, reference=reference, weighted_by_key=self.weighted_by_key)
            except ValueError as error:
                logger.warning("screening: dropped the reply of client %s: %s", node_id, error)
                rejected += 1
                continue
            with np.errstate(over="ignore", invalid="ignore"):  # inf - inf: screened below
                candidates.append(flat - global_vector)
            node_ids.append(node_id)
            weights_by_id[node_id] = count
            contents_by_id[node_id] = message.content
        screened = screen_updates(
            candidates,
            node_ids,
            num_params=global_vector.size,
            dtype=torch.from_numpy(global_vector).dtype,
            max_norm=self.max_norm,
        )
        server_update = None
        if self.rule.requires_server_update and self.server_update_fn is not None:  # checked in __init__
            server_update = self.server_update_fn(server_round, reference)
        update, reason = aggregate_screened(
            self.rule, screened, weights_by_id=weights_by_id, server_update=server_update
        )

        metrics = self._client_metrics([contents_by_id[node] for node in screened.client_ids])
        metrics["num-rejected"] = rejected + len(screened.rejected)
        if update is None:
            logger.warning("round %d: keeping the global model: %s", server_round, reason)
            return None, metrics
        new_vector = global_vector + update.numpy().astype(global_vector.dtype)
        return unflatten_arrays(new_vector, reference=reference), metrics

    def _client_metrics(self, contents: list[RecordDict]) -> MetricRecord:
        """Flower's metric aggregation over the kept replies, or empty if they disagree."""
        if not contents:
            return MetricRecord()
        try:
            validate_message_reply_consistency(contents, weighted_by_key=self.weighted_by_key, check_arrayrecord=False)
        except InconsistentMessageReplies as error:
            logger.warning("client metrics not aggregated: %s", error)
            return MetricRecord()
        return self.train_metrics_aggr_fn(contents, self.weighted_by_key)
