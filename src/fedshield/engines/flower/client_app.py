"""The Flower ClientApp (Message API): thin handlers around :mod:`fedshield.client.work`.

Message types
-------------
query
    Reply with this node's ``partition-id`` so the server can map user IDs to nodes.
train
    Phase 1: train from the sent global model (honest, poisoned or FLIP-hardened).
train.craft
    Phase 2, malicious clients only: craft a reply from the round's phase-1 updates.

Every work message carries the run's resolved config; the client builds the same
:class:`~fedshield.experiment.Experiment` from it (once per process) and finds its own data
by ``partition-id``. Per-job client state (FLIP's class-distance cache) lives in
``context.state``, which Flower keeps for the node across rounds.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedshield.client.work import craft_step, train_step
from fedshield.config.build import experiment_from_yaml
from fedshield.engines.flower.records import (
    EXPERIMENT_KEY,
    array_record,
    as_int,
    as_ints,
    record_tensor,
    record_to_state,
    reply_content,
    scalars,
    state_to_record,
)
from fedshield.experiment import Experiment
from fedshield.task.determinism import configure_torch
from fedshield.task.jobs import JobSpec
from fedshield.task.messages import CraftRequest, TrainRequest

app = ClientApp()


def _experiment_and_job(
    message: Message, context: Context
) -> tuple[Experiment, JobSpec, int, ConfigRecord | MetricRecord]:
    configure_torch(threads=1)
    config = scalars(message.content, "config")
    experiment = experiment_from_yaml(str(config[EXPERIMENT_KEY]))
    jobs = {job.job_id: job for job in experiment.jobs}
    job = jobs[as_int(config["job-id"])]
    user_id = experiment.federation.user_ids[partition_id(context)]
    if as_int(config["user-id"]) != user_id or user_id not in job.client_ids:
        raise ValueError(f"message for user {config['user-id']!r} reached the node of user {user_id}")
    return experiment, job, user_id, config


def partition_id(context: Context) -> int:
    """This node's ``partition-id`` (node config; an integer, or its decimal string)."""
    value = context.node_config["partition-id"]
    return int(value) if isinstance(value, str) else as_int(value)


@app.query()
def query(message: Message, context: Context) -> Message:
    partition = partition_id(context)
    return Message(RecordDict({"node": ConfigRecord({"partition-id": partition})}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    experiment, job, user_id, config = _experiment_and_job(message, context)
    state_key = f"client-state-{job.job_id}"
    request = TrainRequest(
        job=job,
        user_id=user_id,
        server_round=as_int(config["round"]),
        global_params=record_tensor(array_record(message.content, "arrays"), "params"),
        num_sampled=as_int(config["num-sampled"]),
    )
    reply, state = train_step(experiment, request, record_to_state(context.state.array_records.get(state_key)))
    if state:
        context.state[state_key] = state_to_record(state)
    content = reply_content(job_id=job.job_id, user_id=user_id, reply=reply)
    return Message(content, reply_to=message)


@app.train("craft")
def craft(message: Message, context: Context) -> Message:
    experiment, job, user_id, config = _experiment_and_job(message, context)
    arrays = array_record(message.content, "arrays")
    request = CraftRequest(
        job=job,
        user_id=user_id,
        server_round=as_int(config["round"]),
        sampled=as_ints(config["sampled"]),
        updates=record_tensor(arrays, "updates"),
        weights=record_tensor(arrays, "weights"),
        global_params=record_tensor(arrays, "params"),
    )
    reply = craft_step(experiment, request)
    content = reply_content(job_id=job.job_id, user_id=user_id, reply=reply)
    return Message(content, reply_to=message)
