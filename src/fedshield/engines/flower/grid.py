"""Train jobs over a Flower Grid: the Flower driver, for the simulation and for deployment alike."""

from __future__ import annotations

from flwr.serverapp import Grid

from fedshield.engines.base import FinishedJob, OnJobDone, OnRound
from fedshield.engines.flower.nodes import NodeDirectory
from fedshield.engines.flower.transport import FlowerTransport
from fedshield.experiment import Experiment
from fedshield.server.protocol import run_jobs
from fedshield.task.jobs import JobSpec


def check_groups_per_wave(groups_per_wave: int) -> int:
    if isinstance(groups_per_wave, bool) or not isinstance(groups_per_wave, int) or groups_per_wave < 1:
        raise ValueError(f"engine.groups_per_wave must be an integer >= 1; got {groups_per_wave!r}")
    return groups_per_wave


def check_min_nodes(min_nodes: int) -> int:
    if isinstance(min_nodes, bool) or not isinstance(min_nodes, int) or min_nodes < 1:
        raise ValueError(
            f"engine.min_nodes: SuperNodes to wait for before the first round, an integer >= 1; got {min_nodes!r}"
        )
    return min_nodes


class GridEngine:
    """Runs jobs on an existing Grid (the one a ServerApp is given), ``groups_per_wave`` jobs at
    a time, one ``send_and_receive`` per phase per round for the whole wave; each wave's jobs are
    reported (and so checkpointed) when the wave ends."""

    name = "flower"
    client_training: dict | None = None  # clients always train one by one

    def __init__(
        self, grid: Grid, *, groups_per_wave: int = 50, discovery_timeout: float = 300.0, min_nodes: int = 1
    ) -> None:
        self.grid = grid
        self.groups_per_wave = check_groups_per_wave(groups_per_wave)
        self.discovery_timeout = discovery_timeout
        self.min_nodes = check_min_nodes(min_nodes)
        self.failed_replies = 0

    def train(
        self,
        experiment: Experiment,
        jobs: list[JobSpec],
        *,
        on_job_done: OnJobDone,
        on_progress: OnRound | None = None,
    ) -> None:
        nodes = NodeDirectory(
            self.grid, experiment.federation.user_ids, timeout=self.discovery_timeout, min_nodes=self.min_nodes
        )
        nodes.discover()
        transport = FlowerTransport(self.grid, nodes, experiment.config_yaml)
        for start in range(0, len(jobs), self.groups_per_wave):
            wave = list(jobs[start : start + self.groups_per_wave])
            for state in run_jobs(experiment, wave, transport, on_round=on_progress):
                on_job_done(FinishedJob(state.job.job_id, state.params, state.history, state.predictions))
        self.failed_replies = transport.failures
