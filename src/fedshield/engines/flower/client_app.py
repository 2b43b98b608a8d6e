"""The Flower ClientApp (Message API): thin handlers around :mod:`fedshield.client.work`.

Message types
-------------
query
    Reply with this node's ``partition-id`` (absent on a pool node, which serves any user) and
    its fedshield build, so the server can route users to nodes and refuse a mixed install.
train
    Phase 1: train from the sent global model (honest, poisoned or FLIP-hardened).
train.craft
    Phase 2, malicious clients only: craft a reply from the round's phase-1 updates.

Every work message carries the run's resolved config and the node's *tasks* of the round, one
per (job, user) routed to it (:mod:`fedshield.engines.flower.records`); the client builds the
same :class:`~fedshield.experiment.Experiment` from the config (once per process) and trains
each named user on that user's data (:mod:`fedshield.engines.flower.nodes`). Per-job client
state (FLIP's class-distance cache) lives in ``context.state`` on a dedicated node, which Flower
keeps for the node across rounds; a pool node gets it with the task and returns the new state
with its reply.
"""

from __future__ import annotations

import os
import sys

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedshield.client.work import craft_step, train_step
from fedshield.config.build import experiment_from_yaml
from fedshield.engines.flower.nodes import BUILD_KEY, PARTITION_KEY, build_identity
from fedshield.engines.flower.records import (
    EXPERIMENT_KEY,
    USER_ERROR_KEY,
    TaskReply,
    as_int,
    craft_tasks,
    record_to_state,
    reply_records,
    state_to_record,
    train_tasks,
)
from fedshield.experiment import Experiment
from fedshield.task.determinism import configure_torch
from fedshield.task.devices import ClientDeviceError
from fedshield.task.jobs import JobSpec
from fedshield.task.messages import CraftRequest, TrainRequest

app = ClientApp()


def _experiment(config: ConfigRecord | MetricRecord) -> Experiment:
    """The run's experiment, built once per process from the config every message carries."""
    configure_torch(threads=1)
    experiment = experiment_from_yaml(str(config[EXPERIMENT_KEY]), serves=False)
    announce_client_device(experiment)
    return experiment


def _job(experiment: Experiment, context: Context, job_id: int, user_id: int) -> JobSpec:
    """Job ``job_id``, checking that ``user_id`` is one of its clients and may be served here."""
    job = experiment.job_by_id[job_id]
    partition = partition_id(context)
    if partition is not None and user_id != experiment.federation.user_ids[partition]:
        raise ValueError(
            f"message for user {user_id} reached the node of user {experiment.federation.user_ids[partition]}"
        )
    if user_id not in job.client_ids:
        raise ValueError(f"message for user {user_id}, who is not a client of job {job.job_id}")
    return job


def ray_gpu_ids() -> list[str] | None:
    """The GPU IDs Ray gave this process's actor, or None outside a Ray worker."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    return [str(gpu) for gpu in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


def hide_gpus_ray_did_not_give() -> list[str] | None:
    """Under Ray, a client that was given no GPU sees none, on a private Ray and an attached cluster
    alike: Ray leaves ``CUDA_VISIBLE_DEVICES`` alone for such actors when the cluster was started with
    ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0`` (as the private Ray is, to silence Ray's warning; it
    will be Ray's default), and then ``client.device=auto`` would take a GPU Ray gave another client.
    Returns the GPU IDs Ray gave (None outside Ray). Call before torch first touches CUDA."""
    gpu_ids = ray_gpu_ids()
    if gpu_ids == []:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return gpu_ids


def announce_client_device(experiment: Experiment) -> None:
    """Resolve ``client.device`` in this worker (once per experiment) and say so in the worker's log."""
    if "client_device" in vars(experiment):  # resolved (a cached property)
        return
    gpu_ids = hide_gpus_ray_did_not_give()
    device = experiment.client_device  # a ClientDeviceError here names client.device
    print(
        f"fedshield client: device {device} (client.device={experiment.client_device_name}; Ray GPU ids {gpu_ids})",
        file=sys.stderr,
        flush=True,
    )


def partition_id(context: Context) -> int | None:
    """This node's ``partition-id`` (node config; an integer, or its decimal string), or None on a
    pool node, which has none."""
    if PARTITION_KEY not in context.node_config:
        return None
    value = context.node_config[PARTITION_KEY]
    return int(value) if isinstance(value, str) else as_int(value)


@app.query()
def query(message: Message, context: Context) -> Message:
    node = ConfigRecord({BUILD_KEY: build_identity()})
    partition = partition_id(context)
    if partition is not None:
        node[PARTITION_KEY] = partition
    return Message(RecordDict({"node": node}), reply_to=message)


def user_error_reply(error: ClientDeviceError, message: Message) -> Message:
    """The reply that ends the run with ``error``'s one line (a crash would only drop this reply)."""
    return Message(RecordDict({USER_ERROR_KEY: ConfigRecord({"message": str(error)})}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    config, tasks = train_tasks(message.content)
    try:
        experiment = _experiment(config)
    except ClientDeviceError as error:
        return user_error_reply(error, message)
    server_round = as_int(config["round"])
    replies = []
    for task in tasks:
        request = TrainRequest(
            job=_job(experiment, context, task.job_id, task.user_id),
            user_id=task.user_id,
            server_round=server_round,
            global_params=task.global_params,
            num_sampled=task.num_sampled,
        )
        # A pool node gets the user's state with the task and returns it; a dedicated node keeps it.
        state_key = f"client-state-{task.job_id}"
        saved = task.state if task.state is not None else record_to_state(context.state.array_records.get(state_key))
        reply, state = train_step(experiment, request, saved)
        if task.state is None and state:
            context.state[state_key] = state_to_record(state)
        replies.append(TaskReply(task.job_id, task.user_id, reply, state if task.state is not None else None))
    return Message(reply_records(replies), reply_to=message)


@app.train("craft")
def craft(message: Message, context: Context) -> Message:
    config, tasks = craft_tasks(message.content)
    try:
        experiment = _experiment(config)
    except ClientDeviceError as error:
        return user_error_reply(error, message)
    replies = []
    for task in tasks:
        request = CraftRequest(
            job=_job(experiment, context, task.job_id, task.user_id),
            user_id=task.user_id,
            server_round=as_int(config["round"]),
            sampled=task.sampled,
            updates=task.updates,
            weights=task.weights,
            global_params=task.global_params,
        )
        replies.append(TaskReply(task.job_id, task.user_id, craft_step(experiment, request), None))
    return Message(reply_records(replies), reply_to=message)
