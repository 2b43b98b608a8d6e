"""Translation between Flower records and the tensors the client and server functions use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedshield.task.defense import ClientState
from fedshield.task.messages import ClientReply
from fedshield.task.updates import dense_update

EXPERIMENT_KEY = "experiment"  # the resolved YAML of the run, carried by every work message
# A pool-served user's client state (FLIP's caches), sent with its work and returned with the reply.
CLIENT_STATE_KEY = "client-state"
USER_ERROR_KEY = "user-error"  # a client's reply instead of work: the user's mistake, to end the run with


def tensor_record(**tensors: torch.Tensor) -> ArrayRecord:
    return ArrayRecord({name: Array(t.detach().cpu().numpy()) for name, t in tensors.items()})


def record_tensor(record: ArrayRecord, name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(record[name].numpy(), copy=True))


def array_record(content: RecordDict, key: str) -> ArrayRecord:
    """``content[key]``, which must be an ArrayRecord (a malformed message raises TypeError)."""
    record = content[key]
    if not isinstance(record, ArrayRecord):
        raise TypeError(f"message record {key!r} must be an ArrayRecord; got {type(record).__name__}")
    return record


def scalars(content: RecordDict, key: str) -> ConfigRecord | MetricRecord:
    """``content[key]``, which must hold scalars (a ConfigRecord or a MetricRecord)."""
    record = content[key]
    if not isinstance(record, ConfigRecord | MetricRecord):
        raise TypeError(f"message record {key!r} must be a ConfigRecord; got {type(record).__name__}")
    return record


def as_int(value: object) -> int:
    """A record value that must be an integer (bools and other types raise TypeError)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer record value; got {value!r}")
    return value


def as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number record value; got {value!r}")
    return float(value)


def as_ints(value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list of integers; got {value!r}")
    return tuple(as_int(item) for item in value)


def state_to_record(state: ClientState) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in state.items()})


def record_to_state(record: ArrayRecord | None) -> ClientState:
    if record is None:
        return {}
    return {name: np.array(record[name].numpy(), copy=True) for name in record.keys()}


DIAGNOSTIC_PREFIX = "diag."  # a ClientReply.metrics entry travels as "diag.<name>"

# One message per node per phase carries that node's *tasks* (one per (job, user) it serves this
# round; a pool node gets many): the config record lists them in order, task i's arrays and
# records carry the suffix ".i", and each job's global model travels once.


@dataclass(frozen=True)
class TrainTask:
    job_id: int
    user_id: int
    num_sampled: int
    global_params: torch.Tensor
    state: ClientState | None  # carried for a pool-served user; None: kept on the node


@dataclass(frozen=True)
class CraftTask:
    job_id: int
    user_id: int
    sampled: tuple[int, ...]
    global_params: torch.Tensor
    updates: torch.Tensor
    weights: torch.Tensor


@dataclass(frozen=True)
class TaskReply:
    job_id: int
    user_id: int
    reply: ClientReply
    state: ClientState | None  # the new carried state (None when the node keeps it)


def _header(experiment_yaml: str, server_round: int, keys: Sequence[tuple[int, int]], **extra) -> ConfigRecord:
    return ConfigRecord(
        {
            EXPERIMENT_KEY: experiment_yaml,
            "round": server_round,
            "job-ids": [job_id for job_id, _ in keys],
            "user-ids": [user_id for _, user_id in keys],
            **extra,
        }
    )


def _keys(config: ConfigRecord | MetricRecord) -> list[tuple[int, int]]:
    job_ids, user_ids = as_ints(config["job-ids"]), as_ints(config["user-ids"])
    if len(job_ids) != len(user_ids):
        raise ValueError(f"{len(job_ids)} job IDs for {len(user_ids)} user IDs")
    return list(zip(job_ids, user_ids, strict=True))


def train_content(experiment_yaml: str, server_round: int, tasks: Sequence[TrainTask]) -> RecordDict:
    config = _header(
        experiment_yaml,
        server_round,
        [(t.job_id, t.user_id) for t in tasks],
        **{"num-sampled": [t.num_sampled for t in tasks]},
    )
    content = RecordDict(
        {"config": config, "params": tensor_record(**{f"job-{t.job_id}": t.global_params for t in tasks})}
    )
    for i, task in enumerate(tasks):
        if task.state is not None:
            content[f"{CLIENT_STATE_KEY}.{i}"] = state_to_record(task.state)
    return content


def train_tasks(content: RecordDict) -> tuple[ConfigRecord | MetricRecord, list[TrainTask]]:
    config = scalars(content, "config")
    params = array_record(content, "params")
    num_sampled = as_ints(config["num-sampled"])
    tasks = []
    for i, (job_id, user_id) in enumerate(_keys(config)):
        carried = f"{CLIENT_STATE_KEY}.{i}" in content
        state = record_to_state(array_record(content, f"{CLIENT_STATE_KEY}.{i}")) if carried else None
        tasks.append(TrainTask(job_id, user_id, num_sampled[i], record_tensor(params, f"job-{job_id}"), state))
    return config, tasks


def craft_content(experiment_yaml: str, server_round: int, tasks: Sequence[CraftTask]) -> RecordDict:
    config = _header(
        experiment_yaml,
        server_round,
        [(t.job_id, t.user_id) for t in tasks],
        **{f"sampled.{i}": list(t.sampled) for i, t in enumerate(tasks)},
    )
    arrays = {}
    for i, t in enumerate(tasks):
        arrays.update({f"params.{i}": t.global_params, f"updates.{i}": t.updates, f"weights.{i}": t.weights})
    return RecordDict({"config": config, "arrays": tensor_record(**arrays)})


def craft_tasks(content: RecordDict) -> tuple[ConfigRecord | MetricRecord, list[CraftTask]]:
    config = scalars(content, "config")
    arrays = array_record(content, "arrays")
    tasks = [
        CraftTask(
            job_id,
            user_id,
            as_ints(config[f"sampled.{i}"]),
            record_tensor(arrays, f"params.{i}"),
            record_tensor(arrays, f"updates.{i}"),
            record_tensor(arrays, f"weights.{i}"),
        )
        for i, (job_id, user_id) in enumerate(_keys(config))
    ]
    return config, tasks


def reply_records(replies: Sequence[TaskReply]) -> RecordDict:
    """One node's replies to the tasks of a message, in task order."""
    content = RecordDict(
        {
            "who": ConfigRecord({"job-ids": [r.job_id for r in replies], "user-ids": [r.user_id for r in replies]}),
            "updates": tensor_record(**{str(i): dense_update(r.reply.update) for i, r in enumerate(replies)}),
        }
    )
    for i, r in enumerate(replies):
        diagnostics = {DIAGNOSTIC_PREFIX + name: float(value) for name, value in r.reply.metrics.items()}
        content[f"metrics.{i}"] = MetricRecord(
            {"num-examples": r.reply.num_examples, "loss": r.reply.loss, **diagnostics}
        )
        if r.state is not None:
            content[f"{CLIENT_STATE_KEY}.{i}"] = state_to_record(r.state)
    return content


def task_replies(content: RecordDict) -> list[TaskReply]:
    updates = array_record(content, "updates")
    replies = []
    for i, (job_id, user_id) in enumerate(_keys(scalars(content, "who"))):
        metrics = scalars(content, f"metrics.{i}")
        reply = ClientReply(
            record_tensor(updates, str(i)),
            as_int(metrics["num-examples"]),
            as_float(metrics["loss"]),
            reply_diagnostics(metrics),
        )
        carried = f"{CLIENT_STATE_KEY}.{i}" in content
        state = record_to_state(array_record(content, f"{CLIENT_STATE_KEY}.{i}")) if carried else None
        replies.append(TaskReply(job_id, user_id, reply, state))
    return replies


def reply_diagnostics(metrics: ConfigRecord | MetricRecord) -> dict[str, float]:
    """The ``ClientReply.metrics`` carried by a reply's metric record."""
    return {
        name[len(DIAGNOSTIC_PREFIX) :]: as_float(value)
        for name, value in metrics.items()
        if name.startswith(DIAGNOSTIC_PREFIX)
    }
