"""A real Flower federation on 127.0.0.1: SuperLink, SuperNodes and ``flwr run .`` as processes.

The ServerApp runs in its own ``flwr-serverapp`` process under the SuperLink, every message starts
a ``flwr-clientapp`` process under a SuperNode, and all of them talk over local sockets. The job
must still equal the in-process engine's bit for bit; and a SuperNode that dies mid-run must not
stop the run: its replies count as missing, the rest of the round goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fedshield.config import build_experiment, compose_config
from fedshield.engines.local import InProcessTransport
from fedshield.run import run
from fedshield.server.protocol import run_jobs
from fedshield.task.determinism import configure_torch
from helpers import LOCAL_PER_CLIENT, job_params

pytestmark = [pytest.mark.flower, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
CONNECTION = "fedshield-test"
NUM_NODES = 2
STARTUP_TIMEOUT = 60.0
# A killed SuperNode is declared unavailable after 2 missed heartbeats (30 s apart in flwr 1.41).
RUN_TIMEOUT = 240.0
TINY = [
    "dataset=mnist5k",
    "model=logistic",
    f"num_clients={NUM_NODES}",
    "num_rounds=2",
    "sample_fraction=1.0",
    "client.local_steps=3",
    "client.batch_size=16",
]


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free on 127.0.0.1 (all sockets held until all are picked)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} missing)"


def _wait_until(
    condition, *, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}\n{_tail(log) if log else ''}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{_tail(log) if log else ''}")
        time.sleep(0.2)


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """PIDs of every living descendant of ``pid`` (from /proc; detached ones included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _signal(pid: int, sig: int, *, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(process: subprocess.Popen, *, grace: float = 10.0) -> None:
    """Stop a process started here, its process group and every descendant (by PID)."""
    descendants = _descendants(process.pid)
    _signal(process.pid, signal.SIGTERM, group=True)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal(process.pid, signal.SIGKILL, group=True)
        process.wait(timeout=grace)
    # The SuperLink's SuperExec is detached (own session): kill what is left of the tree.
    for pid in descendants:
        _signal(pid, signal.SIGKILL)


@dataclass
class Federation:
    root: Path
    env: dict[str, str]
    superlink: subprocess.Popen
    supernodes: list[subprocess.Popen]

    def node_log(self, partition: int) -> str:
        return (self.root / f"supernode-{partition}.log").read_text(errors="replace")

    def train_replies_sent(self, partition: int) -> int:
        """Train replies this SuperNode has pushed to the SuperLink (logged "Sending", then "Sent")."""
        chunks = self.node_log(partition).split("Sending: ")[1:]
        return sum(chunk.startswith("train message") and "Sent successfully" in chunk for chunk in chunks)

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout
        )

    def submit(self, overrides: list[str], output_dir: Path) -> int:
        run_config = f'overrides="{" ".join(overrides)}" output-dir="{output_dir}"'
        done = self.flwr("run", str(REPO_ROOT), CONNECTION, "--format", "json", "--run-config", run_config)
        assert done.returncode == 0, f"flwr run failed:\n{done.stdout}\n{done.stderr}"
        reply = json.loads(done.stdout[done.stdout.index("{") :])
        assert reply["success"], reply
        return int(reply["run-id"])

    def status(self, run_id: int) -> str:
        done = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json", timeout=30)
        if done.returncode != 0 or "{" not in done.stdout:
            return "unknown"
        (entry,) = json.loads(done.stdout[done.stdout.index("{") :])["runs"]
        return str(entry["status"])

    def server_log(self, run_id: int) -> str:
        done = self.flwr("log", str(run_id), CONNECTION, "--show", timeout=30)
        return done.stdout + done.stderr

    def wait(self, run_id: int, *, timeout: float = RUN_TIMEOUT) -> None:
        """Block until the run finished; fail with the ServerApp's log unless it completed."""
        deadline = time.monotonic() + timeout
        status = self.status(run_id)
        while not status.startswith("finished"):
            if time.monotonic() > deadline:
                self.flwr("stop", str(run_id), CONNECTION, timeout=30)
                pytest.fail(f"run {run_id} still {status} after {timeout:.0f} s\n{self.server_log(run_id)[-4000:]}")
            time.sleep(2.0)
            status = self.status(run_id)
        assert status == "finished:completed", f"run {run_id} {status}\n{self.server_log(run_id)[-4000:]}"

    def kill_node(self, partition: int) -> None:
        """SIGKILL a SuperNode with its SuperExec and ClientApps: no goodbye to the SuperLink."""
        node = self.supernodes[partition]
        _signal(node.pid, signal.SIGKILL, group=True)
        node.wait(timeout=10)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Iterator[Federation]:
    """A SuperLink and NUM_NODES SuperNodes on 127.0.0.1, stopped (by PID) whatever happens."""
    if not (BIN / "flower-superlink").exists():
        pytest.skip(f"flower-superlink is not installed beside {sys.executable}")
    root = tmp_path_factory.mktemp("federation")
    home = root / "flwr-home"
    home.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # flower-superexec, flwr-serverapp, ...
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
    }
    link_port, *node_ports = _free_ports(1 + NUM_NODES)
    started: list[subprocess.Popen] = []

    def start(name: str, *command: str) -> subprocess.Popen:
        with open(root / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [str(BIN / command[0]), *command[1:]],
                env=env,
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )
        started.append(process)
        return process

    try:
        superlink = start(
            "superlink",
            *f"flower-superlink --insecure --host {HOST} --port {link_port}".split(),
            "--disable-runtime-dependency-installation",
        )
        _wait_until(
            lambda: _accepts_connections(link_port),
            timeout=STARTUP_TIMEOUT,
            what="SuperLink",
            process=superlink,
            log=root / "superlink.log",
        )
        supernodes = []
        for partition, port in enumerate(node_ports):
            node = start(
                f"supernode-{partition}",
                *f"flower-supernode --insecure --superlink {HOST}:{link_port} --host {HOST} --port {port}".split(),
                "--node-config",
                f"partition-id={partition} num-partitions={NUM_NODES}",
            )
            supernodes.append(node)
        for partition, (node, port) in enumerate(zip(supernodes, node_ports, strict=True)):
            log = root / f"supernode-{partition}.log"
            _wait_until(
                lambda port=port: _accepts_connections(port),
                timeout=STARTUP_TIMEOUT,
                what=f"SuperNode {partition}",
                process=node,
                log=log,
            )
            _wait_until(
                lambda log=log: "SuperNode ID" in log.read_text(errors="replace"),
                timeout=STARTUP_TIMEOUT,
                what=f"SuperNode {partition} joining the SuperLink",
                process=node,
                log=log,
            )
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{HOST}:{link_port}"\ninsecure = true\n'
        )
        yield Federation(root, env, superlink, supernodes)
    finally:
        for process in reversed(started):
            _stop(process)


def _digest(params: torch.Tensor) -> str:
    return hashlib.sha256(params.numpy().tobytes()).hexdigest()


def _summary_accuracy(output_dir: Path) -> float:
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["engine"] == "flower" and summary["num_clients"] == NUM_NODES
    accuracy = summary["ensemble_accuracy"]
    assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0
    return accuracy


def test_flwr_run_over_processes_equals_the_local_engine_bit_for_bit(federation, tmp_path):
    # Prepare
    output_dir = tmp_path / "federation"

    # Execute
    federation.wait(federation.submit(TINY, output_dir))
    run(compose_config([*TINY, *LOCAL_PER_CLIENT, "engine.workers=1"], output_dir=tmp_path / "local"))

    # Assert
    _summary_accuracy(output_dir)
    rounds = json.loads((output_dir / "metrics.json").read_text())["rounds"]
    assert [(r["round"], r["replies"], r["missing"]) for r in rounds] == [(1, NUM_NODES, 0), (2, NUM_NODES, 0)]
    assert _digest(job_params(output_dir)) == _digest(job_params(tmp_path / "local"))


class _Vanishing:
    """An in-process transport whose client ``user_id`` gives no reply from ``from_round`` on."""

    def __init__(self, transport, *, user_id: int, from_round: int) -> None:
        self.transport, self.user_id, self.from_round = transport, user_id, from_round

    def _drop(self, replies: dict, requests: list) -> dict:
        rounds = {(r.job.job_id, r.user_id): r.server_round for r in requests}
        return {
            key: None if key[1] == self.user_id and rounds[key] >= self.from_round else reply
            for key, reply in replies.items()
        }

    def train(self, requests):
        return self._drop(self.transport.train(requests), requests)

    def craft(self, requests):
        return self._drop(self.transport.craft(requests), requests)


def test_supernode_killed_mid_run_leaves_its_replies_missing_and_the_run_finishes(federation, tmp_path):
    """Runs last in this module: it kills a SuperNode of the shared federation."""
    # Prepare
    victim = NUM_NODES - 1
    output_dir = tmp_path / "federation"
    replies_before = federation.train_replies_sent(victim)

    # Execute: kill the victim as soon as its round-1 reply is on the SuperLink
    run_id = federation.submit(TINY, output_dir)
    _wait_until(
        lambda: federation.train_replies_sent(victim) > replies_before,
        timeout=RUN_TIMEOUT,
        what=f"SuperNode {victim}'s round-1 reply",
    )
    federation.kill_node(victim)
    federation.wait(run_id)

    # Assert: round 2 aggregated the replies that came, and is what it would be had the victim not been sampled
    _summary_accuracy(output_dir)
    rounds = json.loads((output_dir / "metrics.json").read_text())["rounds"]
    assert [(r["round"], r["replies"], r["missing"]) for r in rounds] == [(1, NUM_NODES, 0), (2, NUM_NODES - 1, 1)]
    assert "Node Unavailable" in federation.server_log(run_id), "the ServerApp logs the error reply"
    configure_torch(threads=1)
    experiment = build_experiment(compose_config(TINY, output_dir=tmp_path / "replay"))
    victim_user = experiment.federation.user_ids[victim]
    transport = _Vanishing(InProcessTransport(experiment), user_id=victim_user, from_round=2)
    (state,) = run_jobs(experiment, [experiment.jobs[0]], transport)
    assert _digest(job_params(output_dir)) == _digest(state.params)
