"""Translation between Flower records and the tensors the client and server functions use."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedshield.task.defense import ClientState
from fedshield.task.messages import ClientReply

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


def reply_content(*, job_id: int, user_id: int, reply: ClientReply) -> RecordDict:
    diagnostics = {DIAGNOSTIC_PREFIX + name: float(value) for name, value in reply.metrics.items()}
    return RecordDict(
        {
            "update": tensor_record(update=reply.update),
            "metrics": MetricRecord({"num-examples": reply.num_examples, "loss": reply.loss, **diagnostics}),
            "who": ConfigRecord({"job-id": job_id, "user-id": user_id}),
        }
    )


def reply_diagnostics(metrics: ConfigRecord | MetricRecord) -> dict[str, float]:
    """The ``ClientReply.metrics`` carried by a reply's metric record."""
    return {
        name[len(DIAGNOSTIC_PREFIX) :]: as_float(value)
        for name, value in metrics.items()
        if name.startswith(DIAGNOSTIC_PREFIX)
    }
