"""``engine=flower``: the jobs run as a Flower ServerApp and ClientApps on the Ray simulation backend."""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable

import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from omegaconf import OmegaConf

from fedshield.engines.base import OnJobDone, OnRound
from fedshield.engines.flower.grid import GridEngine, check_groups_per_wave, check_min_nodes
from fedshield.errors import UserError
from fedshield.experiment import Experiment
from fedshield.task.devices import AUTO
from fedshield.task.jobs import JobSpec

logger = logging.getLogger(__name__)

# ray.init arguments that size a new local Ray; Ray refuses them when it attaches to a cluster.
_NEW_CLUSTER_ONLY_ARGS = (
    "num_cpus",
    "num_gpus",
    "resources",
    "labels",
    "object_store_memory",
    "_system_config",
    "_enable_object_reconstruction",
)
_HOST_PORT = re.compile(r"^\S+:\d+$")
_ADDRESS_PROBE_SECONDS = 5.0


class SimulationBackendError(RuntimeError):
    """The Ray simulation backend stopped; the message is the backend's own reason."""


class RayAddressError(UserError, SimulationBackendError):
    """No Ray cluster can be reached at ``engine.address``."""


class RayResourcesError(UserError, SimulationBackendError):
    """No Ray node can host a single client with ``engine.client_resources``."""


def check_gpu_share(gpu_share: dict) -> dict[str, float]:
    for model, share in gpu_share.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not share > 0:
            raise ValueError(f"engine.gpu_share.{model}: a client's share of a GPU, a number > 0; got {share!r}")
    if "default" not in gpu_share:
        raise ValueError(f"engine.gpu_share: needs a default entry (models without their own); got {gpu_share}")
    return {str(model): float(share) for model, share in gpu_share.items()}


def clients_use_cuda(experiment: Experiment) -> bool:
    """Whether ``client.device`` asks for CUDA as such (cuda, cuda:N, or null with device cuda);
    auto takes a GPU only where Ray gives one, so it asks for none by itself."""
    name = experiment.client_device_name
    if name == AUTO:
        return False
    return (experiment.device if name is None else torch.device(name)).type == "cuda"


def model_name(experiment: Experiment) -> str:
    """The class name of the run's model (``model._target_``'s last part: MnistCNN, ResNet20, ...)."""
    return str(OmegaConf.create(experiment.config_yaml).model._target_).rsplit(".", 1)[-1]


class _BackendStopped(Exception):
    """Raised in the ServerApp thread once the backend is down (nobody will answer)."""


def check_address(address: str | None) -> str | None:
    if address is None or address == "auto" or (isinstance(address, str) and _HOST_PORT.match(address)):
        return address
    raise ValueError(
        "engine.address: null (a private local Ray), auto (the running cluster or $RAY_ADDRESS) "
        f"or HOST:PORT of a Ray head; got {address!r}"
    )


def check_discovery_timeout(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"engine.discovery_timeout: seconds, a number > 0; got {seconds!r}")
    return float(seconds)


def probe_address(address: str | None) -> None:
    """Refuse at once an address where nothing listens: Ray itself retries for minutes, then exits."""
    if address is None:
        return
    target = os.environ.get("RAY_ADDRESS") if address == "auto" else address
    if not target or "://" in target:  # auto-detection (fails fast) or a Ray Client address
        return
    where = f"{target} (from RAY_ADDRESS)" if address == "auto" else target
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=_ADDRESS_PROBE_SECONDS).close()
    except (OSError, ValueError) as error:
        raise RayAddressError(
            f"engine.address: no Ray cluster answers at {where} ({error}); start one with "
            f"`ray start --head` or set null for a private local Ray; got {address}"
        ) from error


class _StoppableGrid(Grid):
    """The simulation's Grid, but every wait ends as soon as ``backend_down`` is set."""

    def __init__(self, grid: Grid, backend_down: threading.Event, *, pull_interval: float = 0.1) -> None:
        self.grid = grid
        self.backend_down = backend_down
        self.pull_interval = pull_interval

    def _check(self) -> None:
        if self.backend_down.is_set():
            raise _BackendStopped("the Ray simulation backend stopped")

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._check()
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check()
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's InMemoryGrid.send_and_receive (push, then pull until all replied or the
        timeout), waiting on ``backend_down`` instead of sleeping."""
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while deadline is None or time.monotonic() < deadline:
            pulled = list(self.pull_messages(waiting))
            replies.extend(pulled)
            waiting.difference_update(reply.metadata.reply_to_message_id for reply in pulled)
            if not waiting:
                break
            if self.backend_down.wait(self.pull_interval):
                self._check()
        return replies


def _drop_run_simulation_deprecation(record: logging.LogRecord) -> bool:
    # We call run_simulation on purpose: Hydra builds the apps in-process (docs/ARCHITECTURE.md);
    # `flwr run .` is supported too (fedshield.flwr_app).
    return "`run_simulation` function is deprecated" not in record.getMessage()


class FlowerEngine:
    """A simulated federation (one SuperNode per client, on Ray) whose ServerApp runs
    :class:`~fedshield.engines.flower.grid.GridEngine`."""

    name = "flower"
    client_training: dict | None = None  # clients always train one by one

    def __init__(
        self,
        *,
        client_resources: dict | None = None,
        ray_init_args: dict | None = None,
        address: str | None = None,
        discovery_timeout: float = 300.0,
        groups_per_wave: int = 50,
        min_nodes: int = 1,
        gpu_share: dict | None = None,
        verbose: bool = False,
    ) -> None:
        self.client_resources = dict(client_resources or {"num_cpus": 1, "num_gpus": 0.0})
        self.gpu_share = check_gpu_share(dict(gpu_share or {"default": 0.25}))
        self.ray_init_args = dict(ray_init_args or {"num_cpus": 2, "include_dashboard": False})
        if "address" in self.ray_init_args:
            raise ValueError(
                f"engine.ray_init_args.address: set engine.address instead; got {self.ray_init_args['address']!r}"
            )
        self.address = check_address(address)
        self.discovery_timeout = check_discovery_timeout(discovery_timeout)
        self.groups_per_wave = check_groups_per_wave(groups_per_wave)
        self.min_nodes = check_min_nodes(min_nodes)
        self.verbose = verbose
        self.failed_replies = 0

    def train(
        self,
        experiment: Experiment,
        jobs: list[JobSpec],
        *,
        on_job_done: OnJobDone,
        on_progress: OnRound | None = None,
    ) -> None:
        from flwr.simulation import run_simulation

        from fedshield.engines.flower.client_app import app as client_app

        probe_address(self.address)
        client_resources = self.client_resources_for(experiment)
        errors: list[BaseException] = []
        backend_down = threading.Event()
        server_started = threading.Event()
        server_done = threading.Event()
        server_app = ServerApp()

        @server_app.main()
        def main(grid: Grid, context: object) -> None:
            server_started.set()
            engine = GridEngine(
                _StoppableGrid(grid, backend_down),
                groups_per_wave=self.groups_per_wave,
                discovery_timeout=self.discovery_timeout,
                min_nodes=self.min_nodes,
            )
            try:
                engine.train(experiment, jobs, on_job_done=on_job_done, on_progress=on_progress)
            except _BackendStopped:
                pass  # the main thread reports the backend's own error
            except BaseException as error:  # surfaced after the simulation has shut down
                errors.append(error)
                raise
            finally:
                self.failed_replies = engine.failed_replies
                server_done.set()

        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        if not self.verbose:  # Flower logs every message at DEBUG through the root handler
            flower_logger = logging.getLogger("flwr")
            flower_logger.setLevel(logging.WARNING)
            flower_logger.addFilter(_drop_run_simulation_deprecation)
        try:
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=experiment.federation.num_clients,
                backend_config={"client_resources": client_resources, "init_args": self._init_args()},
                verbose_logging=self.verbose,
            )
        except Exception as error:
            if errors:  # the ServerApp failed; run_simulation re-raised it
                raise errors[0] from None
            # The backend failed: Flower raises here, while the ServerApp thread would wait for
            # replies that never come (up to discovery_timeout); stop it, report the backend's reason.
            backend_down.set()
            if server_started.is_set():  # else it will find backend_down set when it starts
                server_done.wait(timeout=30.0)
            raise self._backend_error(error, client_resources) from error
        if errors:
            raise errors[0]

    def client_resources_for(self, experiment: Experiment) -> dict:
        """``client_resources``, where ``num_gpus: null`` (the default) is the model's ``gpu_share``
        when the clients use CUDA, else 0 (a client without a GPU also sees none)."""
        resources = dict(self.client_resources)
        if resources.get("num_gpus") is None:
            share = self.gpu_share.get(model_name(experiment), self.gpu_share["default"])
            resources["num_gpus"] = share if clients_use_cuda(experiment) else 0.0
        return resources

    def _init_args(self) -> dict:
        """ray.init arguments: ``address="local"`` starts a private Ray sized by ray_init_args (never
        joining a cluster found on this machine or in RAY_ADDRESS); an address attaches to a cluster,
        which has its own resources."""
        if self.address is None:
            return {**self.ray_init_args, "address": "local"}
        kept = {key: value for key, value in self.ray_init_args.items() if key not in _NEW_CLUSTER_ONLY_ARGS}
        return {**kept, "address": self.address}

    def _backend_error(self, error: BaseException, client_resources: dict | None = None) -> SimulationBackendError:
        reason = error
        while reason.__cause__ is not None:  # Flower wraps the backend's error twice
            reason = reason.__cause__
        said = f"{type(reason).__name__}: {reason}"
        if "ActorPool is empty" in str(reason):
            return RayResourcesError(
                f"engine.client_resources: no Ray node can host one client with these resources "
                f"(lower num_cpus/num_gpus, or use nodes that have them; Ray: {said}); got "
                f"{self.client_resources if client_resources is None else client_resources}"
            )
        if isinstance(reason, ConnectionError) and self.address is not None:
            return RayAddressError(f"engine.address: cannot attach to a Ray cluster ({said}); got {self.address}")
        return SimulationBackendError(f"the Ray simulation backend stopped: {said}")
