"""``engine=flower``: the jobs run as a Flower ServerApp and ClientApps on the Ray simulation backend."""

from __future__ import annotations

import logging
import os
import re
import socket

from flwr.serverapp import Grid, ServerApp

from fedshield.engines.base import OnJobDone, OnRound
from fedshield.engines.flower.grid import GridEngine, check_groups_per_wave
from fedshield.errors import UserError
from fedshield.experiment import Experiment
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


class RayAddressError(UserError, RuntimeError):
    """No Ray cluster can be reached at ``engine.address``."""


def check_address(address: str | None) -> str | None:
    if address is None or address == "auto" or (isinstance(address, str) and _HOST_PORT.match(address)):
        return address
    raise ValueError(
        "engine.address: null (a private local Ray), auto (the running cluster or $RAY_ADDRESS) "
        f"or HOST:PORT of a Ray head; got {address!r}"
    )


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


def _drop_run_simulation_deprecation(record: logging.LogRecord) -> bool:
    # We call run_simulation on purpose: Hydra builds the apps in-process (docs/ARCHITECTURE.md);
    # `flwr run .` is supported too (fedshield.flwr_app).
    return "`run_simulation` function is deprecated" not in record.getMessage()


class FlowerEngine:
    """A simulated federation (one SuperNode per client, on Ray) whose ServerApp runs
    :class:`~fedshield.engines.flower.grid.GridEngine`."""

    name = "flower"

    def __init__(
        self,
        *,
        client_resources: dict | None = None,
        ray_init_args: dict | None = None,
        address: str | None = None,
        groups_per_wave: int = 50,
        verbose: bool = False,
    ) -> None:
        self.client_resources = dict(client_resources or {"num_cpus": 1, "num_gpus": 0.0})
        self.ray_init_args = dict(ray_init_args or {"num_cpus": 2, "include_dashboard": False})
        if "address" in self.ray_init_args:
            raise ValueError(
                f"engine.ray_init_args.address: set engine.address instead; got {self.ray_init_args['address']!r}"
            )
        self.address = check_address(address)
        self.groups_per_wave = check_groups_per_wave(groups_per_wave)
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
        errors: list[BaseException] = []
        server_app = ServerApp()

        @server_app.main()
        def main(grid: Grid, context: object) -> None:
            engine = GridEngine(grid, groups_per_wave=self.groups_per_wave)
            try:
                engine.train(experiment, jobs, on_job_done=on_job_done, on_progress=on_progress)
            except BaseException as error:  # surfaced after the simulation has shut down
                errors.append(error)
                raise
            finally:
                self.failed_replies = engine.failed_replies

        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        if not self.verbose:  # Flower logs every message at DEBUG through the root handler
            flower_logger = logging.getLogger("flwr")
            flower_logger.setLevel(logging.WARNING)
            flower_logger.addFilter(_drop_run_simulation_deprecation)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=experiment.federation.num_clients,
            backend_config={"client_resources": self.client_resources, "init_args": self._init_args()},
            verbose_logging=self.verbose,
        )
        if errors:
            raise errors[0]

    def _init_args(self) -> dict:
        """ray.init arguments: ``address="local"`` starts a private Ray sized by ray_init_args (never
        joining a cluster found on this machine or in RAY_ADDRESS); an address attaches to a cluster,
        which has its own resources."""
        if self.address is None:
            return {**self.ray_init_args, "address": "local"}
        kept = {key: value for key, value in self.ray_init_args.items() if key not in _NEW_CLUSTER_ONLY_ARGS}
        return {**kept, "address": self.address}
