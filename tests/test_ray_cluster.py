"""``engine.address``: a private local Ray, or attaching to a running Ray cluster; and a Ray backend
that fails stops the run at once with the backend's reason (not after the node-discovery timeout)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.utils import instantiate

from fedshield.config import build_experiment
from fedshield.engines.flower.grid import GridEngine
from fedshield.engines.flower.nodes import NodeDiscoveryError
from fedshield.engines.flower.simulation import FlowerEngine, RayResourcesError
from fedshield.run import run
from helpers import LOCAL_PER_CLIENT, TINY, tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
FLCERT = ["ensemble=flcert_d", "ensemble.num_groups=2"]
OLD_DISCOVERY_TIMEOUT = 300.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _processes_of(marker: str) -> set[int]:
    """PIDs whose command line contains ``marker`` (the head's unique temp dir), and their descendants
    (Ray renames its workers ``ray::...``, but they are the raylet's children)."""
    parent_of: dict[int, int] = {}
    matched: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:  # the process has ended
            continue
        pid = int(entry.name)
        parent_of[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if marker in command:
            matched.add(pid)
    matched.discard(os.getpid())
    while True:
        children = {pid for pid, parent in parent_of.items() if parent in matched} - matched
        if not children:
            return matched
        matched |= children


def _stop(pids: set[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
            time.sleep(0.2)


def _without_ray_address() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}


@contextlib.contextmanager
def own_ray_head(*resources: str, prefix: str = "fsray") -> Iterator[tuple[str, Path]]:
    """A one-machine Ray cluster (2 CPUs, plus ``resources`` flags of `ray start`) of the calling
    test's own; yields (address, session logs folder). Stopped by PID: other Ray work on this
    machine must survive (so never `ray stop`)."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray's socket paths have a length limit
    try:
        subprocess.run(
            [str(RAY), "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}", "--num-cpus=2", *resources]
            + ["--include-dashboard=false", "--disable-usage-stats"],
            env=_without_ray_address(),
            check=True,
            capture_output=True,
            timeout=180,
        )
        yield f"127.0.0.1:{port}", Path(temp_dir) / "session_latest" / "logs"
    finally:
        _stop(_processes_of(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def ray_head():
    """A Ray cluster of this test's own (:func:`own_ray_head`)."""
    with own_ray_head() as head:
        yield head


def _client_actors_started(logs: Path) -> int:
    """How many of the cluster's worker processes hosted a Flower ClientAppActor."""
    return sum(b"ClientAppActor" in log.read_bytes() for log in logs.glob("worker-*.out"))


def _cli(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**_without_ray_address(), "PYTHONPATH": str(REPO_ROOT / "src"), "FLWR_TELEMETRY_ENABLED": "0"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fedshield.cli", *TINY, "engine=flower", *overrides]
        + [f"output_dir={tmp_path / 'run'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=OLD_DISCOVERY_TIMEOUT,
    )
    return done, time.monotonic() - started


def test_a_private_ray_is_sized_by_ray_init_args_and_never_joins_a_cluster():
    engine = FlowerEngine(ray_init_args={"num_cpus": 2, "include_dashboard": False})
    assert engine._init_args() == {"num_cpus": 2, "include_dashboard": False, "address": "local"}


def test_attaching_passes_no_resource_totals():
    engine = FlowerEngine(ray_init_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False}, address="h:6379")
    assert engine._init_args() == {"include_dashboard": False, "address": "h:6379"}


@pytest.mark.parametrize("address", ["", "h", "h:port", "local"])
def test_an_address_that_is_not_auto_or_host_port_is_refused(address):
    with pytest.raises(ValueError, match=r"^engine\.address: .*; got"):
        FlowerEngine(address=address)


def test_a_ray_address_in_ray_init_args_is_refused():
    with pytest.raises(ValueError, match=r"^engine\.ray_init_args\.address: set engine\.address"):
        FlowerEngine(ray_init_args={"address": "auto"})


def test_an_empty_actor_pool_is_reported_as_the_client_resources():
    engine = FlowerEngine(client_resources={"num_cpus": 1, "num_gpus": 0.5})
    try:  # Flower wraps the backend's error twice
        try:
            raise ValueError("ActorPool is empty. Stopping Simulation.")
        except ValueError as reason:
            raise RuntimeError("Simulation Runtime crashed.") from reason
    except RuntimeError as crashed:
        error = engine._backend_error(crashed)
    assert isinstance(error, RayResourcesError)
    assert str(error).startswith("engine.client_resources: ") and "'num_gpus': 0.5" in str(error)


@pytest.mark.slow
@pytest.mark.flower
def test_attaching_to_a_running_cluster_gives_the_local_engines_votes(tmp_path, ray_head, monkeypatch):
    address, logs = ray_head
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    run(tiny_config(tmp_path, *FLCERT, *LOCAL_PER_CLIENT, "engine.workers=1", name="local"))
    run(tiny_config(tmp_path, *FLCERT, "engine=flower", f"engine.address={address}", name="attached"))
    attached_actors = _client_actors_started(logs)
    assert attached_actors > 0, "the clients ran on the test's cluster"

    # `ray job submit` sets RAY_ADDRESS: engine.address=auto follows it, the default (null) does not.
    monkeypatch.setenv("RAY_ADDRESS", address)
    run(tiny_config(tmp_path, *FLCERT, "engine=flower", "engine.address=auto", name="auto"))
    auto_actors = _client_actors_started(logs)
    assert auto_actors > attached_actors, "auto attached to $RAY_ADDRESS"
    run(tiny_config(tmp_path, *FLCERT, "engine=flower", name="private"))
    assert _client_actors_started(logs) == auto_actors, "the default run started its own Ray"

    local_votes = (tmp_path / "local" / "votes.npy").read_bytes()
    for name in ("attached", "auto", "private"):
        assert (tmp_path / name / "votes.npy").read_bytes() == local_votes, name


@pytest.mark.slow
@pytest.mark.flower
def test_unsatisfiable_client_resources_stop_the_run_at_once(tmp_path):
    done, seconds = _cli(tmp_path, "engine.client_resources.num_gpus=0.5")  # this machine has no GPU
    # Interpreter, Hydra and Ray start-up take 20-50 s on a busy 2-core machine; the ServerApp used
    # to wait OLD_DISCOVERY_TIMEOUT more for nodes that never come.
    assert seconds < OLD_DISCOVERY_TIMEOUT / 3, f"took {seconds:.0f} s"
    assert done.returncode == 2, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: engine.client_resources: ") and "'num_gpus': 0.5" in line, line


@pytest.mark.slow
@pytest.mark.flower
def test_an_address_nobody_listens_on_fails_fast_naming_engine_address(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    done, seconds = _cli(tmp_path, f"engine.address={address}")
    assert seconds < OLD_DISCOVERY_TIMEOUT / 3, f"took {seconds:.0f} s"
    assert done.returncode == 2, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: engine.address: no Ray cluster answers at ") and address in line, line


class _GridWithoutNodes:
    """A Grid on which no SuperNode ever connects."""

    def get_node_ids(self) -> list[int]:
        return []


def test_node_discovery_gives_up_after_engine_discovery_timeout(tmp_path):
    cfg = tiny_config(tmp_path, "engine=flower", "engine.discovery_timeout=1")
    engine = GridEngine(_GridWithoutNodes(), discovery_timeout=instantiate(cfg.engine).discovery_timeout)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(
        NodeDiscoveryError,
        match=r"after 1 s, 0 SuperNodes answered \(engine.min_nodes=1\) and 6 of 6 users have no node",
    ):
        engine.train(build_experiment(cfg), [], on_job_done=lambda job: None)
    assert time.monotonic() - started < 30


class _ServerBug(Exception):
    pass


@pytest.mark.slow
@pytest.mark.flower
def test_an_error_of_the_server_app_is_raised_as_itself(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise _ServerBug("in the ServerApp")

    monkeypatch.setattr(GridEngine, "train", fail)
    with pytest.raises(_ServerBug, match="in the ServerApp"):
        run(tiny_config(tmp_path, "engine=flower"))
