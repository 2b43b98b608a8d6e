"""``engine=flower``: the jobs run as a Flower ServerApp and ClientApps on the Ray simulation backend."""

from __future__ import annotations

import logging
import os

from flwr.serverapp import Grid, ServerApp

from fedshield.engines.base import OnJobDone, OnRound
from fedshield.engines.flower.grid import GridEngine, check_groups_per_wave
from fedshield.experiment import Experiment
from fedshield.task.jobs import JobSpec

logger = logging.getLogger(__name__)


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
        groups_per_wave: int = 50,
        verbose: bool = False,
    ) -> None:
        self.client_resources = dict(client_resources or {"num_cpus": 1, "num_gpus": 0.0})
        self.ray_init_args = dict(ray_init_args or {"num_cpus": 2, "include_dashboard": False})
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
            backend_config={"client_resources": self.client_resources, "init_args": self.ray_init_args},
            verbose_logging=self.verbose,
        )
        if errors:
            raise errors[0]
