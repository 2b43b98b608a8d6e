"""A real Flower federation on 127.0.0.1 for tests: SuperLink, SuperNodes and the ``flwr`` CLI as
processes, plain or over TLS, every process stopped by PID (with its descendants) whatever happens."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
CONNECTION = "fedshield-test"
STARTUP_TIMEOUT = 60.0
# A killed SuperNode is declared unavailable after 2 missed heartbeats (30 s apart in flwr 1.41).
RUN_TIMEOUT = 240.0
NUM_NODES = 2
# A run small enough for a test: one client per SuperNode.
TINY = [
    "dataset=mnist5k",
    "model=logistic",
    f"num_clients={NUM_NODES}",
    "num_rounds=2",
    "sample_fraction=1.0",
    "client.local_steps=3",
    "client.batch_size=16",
]


def digest(params: torch.Tensor) -> str:
    return hashlib.sha256(params.numpy().tobytes()).hexdigest()


def summary_accuracy(output_dir: Path) -> float:
    """The ensemble accuracy of a finished Flower run with NUM_NODES clients."""
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["engine"] == "flower" and summary["num_clients"] == NUM_NODES
    accuracy = summary["ensemble_accuracy"]
    assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0
    return accuracy


def free_ports(count: int) -> list[int]:
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


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} missing)"


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}\n{tail(log) if log else ''}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{tail(log) if log else ''}")
        time.sleep(0.2)


def accepts_connections(port: int) -> bool:
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


def send_signal(pid: int, sig: int, *, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(process: subprocess.Popen, *, grace: float = 10.0) -> None:
    """Stop a process started here, its process group and every descendant (by PID)."""
    descendants = _descendants(process.pid)
    send_signal(process.pid, signal.SIGTERM, group=True)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        send_signal(process.pid, signal.SIGKILL, group=True)
        process.wait(timeout=grace)
    # The SuperLink's SuperExec is detached (own session): kill what is left of the tree.
    for pid in descendants:
        send_signal(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Certificates:
    """The files of scripts/generate-certs.sh: the CA and the SuperLink's certificate and key."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    def superlink_options(self) -> list[str]:
        return [
            *("--ssl-ca-certfile", str(self.ca)),
            *("--ssl-certfile", str(self.folder / "server.pem")),
            *("--ssl-keyfile", str(self.folder / "server.key")),
        ]


@dataclass
class Federation:
    root: Path
    env: dict[str, str]
    link_port: int
    certificates: Certificates | None = None
    superlink: subprocess.Popen | None = None
    supernodes: list[subprocess.Popen] = field(default_factory=list)
    started: list[subprocess.Popen] = field(default_factory=list)
    node_ports: list[int] = field(default_factory=list)
    node_configs: list[str | None] = field(default_factory=list)

    def start(self, name: str, *command: str) -> subprocess.Popen:
        """``command`` (a program beside this Python) in its own process group, logged to ``name``.log
        (appended to: a restarted process keeps its predecessor's log)."""
        with open(self.root / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [str(BIN / command[0]), *command[1:]],
                env=self.env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def node_log(self, partition: int) -> str:
        return self.log(f"supernode-{partition}")

    def start_supernode(self, name: str, *transport: str, port: int, node_config: str | None) -> subprocess.Popen:
        """A SuperNode dialling this SuperLink with ``transport`` options (--insecure / --root-certificates);
        without ``node_config`` it is a pool node."""
        return self.start(
            name,
            "flower-supernode",
            *transport,
            *f"--superlink {HOST}:{self.link_port} --host {HOST} --port {port}".split(),
            *(("--node-config", node_config) if node_config is not None else ()),
        )

    def wait_joined(self, index: int, *, joins: int = 1) -> None:
        """Until SuperNode ``index`` has registered ``joins`` times (a restart registers again)."""
        log = self.root / f"supernode-{index}.log"
        wait_until(
            lambda: accepts_connections(self.node_ports[index]),
            timeout=STARTUP_TIMEOUT,
            what=f"SuperNode {index}",
            process=self.supernodes[index],
            log=log,
        )
        wait_until(
            lambda: log.read_text(errors="replace").count("SuperNode ID") >= joins,
            timeout=STARTUP_TIMEOUT,
            what=f"SuperNode {index} joining the SuperLink",
            process=self.supernodes[index],
            log=log,
        )

    def restart_node(self, index: int) -> None:
        """Start SuperNode ``index`` again after :meth:`kill_node` (it registers under a new node ID)."""
        joins = self.node_log(index).count("SuperNode ID")
        self.supernodes[index] = self.start_supernode(
            f"supernode-{index}",
            *self.transport_options(),
            port=self.node_ports[index],
            node_config=self.node_configs[index],
        )
        self.wait_joined(index, joins=joins + 1)

    def transport_options(self) -> list[str]:
        """What this federation's SuperNodes need: --root-certificates over TLS, else --insecure."""
        return ["--root-certificates", str(self.certificates.ca)] if self.certificates else ["--insecure"]

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

    def submit_and_kill_after_its_reply(self, victim: int, overrides: list[str], output_dir: Path) -> int:
        """Submit a run; SIGKILL SuperNode ``victim`` as soon as its first train reply of the run is
        on the SuperLink (its round-1 reply). Returns the run ID."""
        replies_before = self.train_replies_sent(victim)
        run_id = self.submit(overrides, output_dir)
        wait_until(
            lambda: self.train_replies_sent(victim) > replies_before,
            timeout=RUN_TIMEOUT,
            what=f"SuperNode {victim}'s round-1 reply",
        )
        self.kill_node(victim)
        return run_id

    def kill_node(self, partition: int) -> None:
        """SIGKILL a SuperNode with its SuperExec and ClientApps: no goodbye to the SuperLink."""
        node = self.supernodes[partition]
        send_signal(node.pid, signal.SIGKILL, group=True)
        node.wait(timeout=10)


@contextmanager
def running_federation(
    root: Path, *, num_nodes: int, certificates: Certificates | None = None, pool: bool = False
) -> Iterator[Federation]:
    """A SuperLink and ``num_nodes`` joined SuperNodes on 127.0.0.1, with ``flwr``'s connection
    CONNECTION configured; over TLS with ``certificates``, else ``--insecure``. The nodes are
    dedicated (``partition-id`` i), or with ``pool`` pool nodes (no node config). Every process
    this federation started (by then) is stopped on exit, by PID."""
    if not (BIN / "flower-superlink").exists():
        pytest.skip(f"flower-superlink is not installed beside {sys.executable}")
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
    link_port, *node_ports = free_ports(1 + num_nodes)
    node_configs = [None if pool else f"partition-id={i} num-partitions={num_nodes}" for i in range(num_nodes)]
    federation = Federation(root, env, link_port, certificates, node_ports=node_ports, node_configs=node_configs)
    try:
        link_security = certificates.superlink_options() if certificates else ["--insecure"]
        federation.superlink = federation.start(
            "superlink",
            "flower-superlink",
            *link_security,
            *f"--host {HOST} --port {link_port}".split(),
            "--disable-runtime-dependency-installation",
        )
        wait_until(
            lambda: accepts_connections(link_port),
            timeout=STARTUP_TIMEOUT,
            what="SuperLink",
            process=federation.superlink,
            log=root / "superlink.log",
        )
        for index, port in enumerate(node_ports):
            node = federation.start_supernode(
                f"supernode-{index}", *federation.transport_options(), port=port, node_config=node_configs[index]
            )
            federation.supernodes.append(node)
        for index in range(num_nodes):
            federation.wait_joined(index)
        # root-certificates must be an absolute path (flwr rejects relative ones)
        security = f'root-certificates = "{certificates.ca.resolve()}"' if certificates else "insecure = true"
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{HOST}:{link_port}"\n{security}\n'
        )
        yield federation
    finally:
        for process in reversed(federation.started):
            stop(process)


def check_tiny_run_equals_the_local_engine(federation: Federation, tmp_path: Path) -> None:
    """Run TINY on ``federation``, then in-process client by client: both rounds complete, and the
    job's model is the same bit for bit."""
    from fedshield.config import compose_config
    from fedshield.run import run
    from helpers import LOCAL_PER_CLIENT, job_params

    output_dir = tmp_path / "federation"
    federation.wait(federation.submit(TINY, output_dir))
    run(compose_config([*TINY, *LOCAL_PER_CLIENT, "engine.workers=1"], output_dir=tmp_path / "local"))
    summary_accuracy(output_dir)
    rounds = json.loads((output_dir / "metrics.json").read_text())["rounds"]
    assert [(r["round"], r["replies"], r["missing"]) for r in rounds] == [(1, NUM_NODES, 0), (2, NUM_NODES, 0)]
    assert digest(job_params(output_dir)) == digest(job_params(tmp_path / "local"))
