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

Every work message carries the run's resolved config and names its user; the client builds the
same :class:`~fedshield.experiment.Experiment` from it (once per process) and takes that user's
data (:mod:`fedshield.engines.flower.nodes`). Per-job client state (FLIP's class-distance cache)
lives in ``context.state`` on a dedicated node, which Flower keeps for the node across rounds;
a pool node gets it with the message and returns the new state with its reply.
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
    CLIENT_STATE_KEY,
    EXPERIMENT_KEY,
    USER_ERROR_KEY,
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
from fedshield.task.devices import ClientDeviceError
from fedshield.task.jobs import JobSpec
from fedshield.task.messages import CraftRequest, TrainRequest

app = ClientApp()


def _experiment_and_job(
    message: Message, context: Context
) -> tuple[Experiment, JobSpec, int, ConfigRecord | MetricRecord]:
    configure_torch(threads=1)
    config = scalars(message.content, "config")
    experiment = experiment_from_yaml(str(config[EXPERIMENT_KEY]), serves=False)
    announce_client_device(experiment)
    jobs = {job.job_id: job for job in experiment.jobs}
    job = jobs[as_int(config["job-id"])]
    user_id = as_int(config["user-id"])
    partition = partition_id(context)
    if partition is not None and user_id != experiment.federation.user_ids[partition]:
        raise ValueError(
            f"message for user {user_id} reached the node of user {experiment.federation.user_ids[partition]}"
        )
    if user_id not in job.client_ids:
        raise ValueError(f"message for user {user_id}, who is not a client of job {job.job_id}")
    return experiment, job, user_id, config


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
    try:
        experiment, job, user_id, config = _experiment_and_job(message, context)
    except ClientDeviceError as error:
        return user_error_reply(error, message)
    request = TrainRequest(
        job=job,
        user_id=user_id,
        server_round=as_int(config["round"]),
        global_params=record_tensor(array_record(message.content, "arrays"), "params"),
        num_sampled=as_int(config["num-sampled"]),
    )
    carried = CLIENT_STATE_KEY in message.content  # sent by the server to a pool node
    state_key = f"client-state-{job.job_id}"
    saved = array_record(message.content, CLIENT_STATE_KEY) if carried else context.state.array_records.get(state_key)
    reply, state = train_step(experiment, request, record_to_state(saved))
    content = reply_content(job_id=job.job_id, user_id=user_id, reply=reply)
    if carried:
        content[CLIENT_STATE_KEY] = state_to_record(state)
    elif state:
        context.state[state_key] = state_to_record(state)
    return Message(content, reply_to=message)


@app.train("craft")
def craft(message: Message, context: Context) -> Message:
    try:
        experiment, job, user_id, config = _experiment_and_job(message, context)
    except ClientDeviceError as error:
        return user_error_reply(error, message)
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
