"""Small configs for tests that run real federated training, and test-only hooks: a garbage-sending
attacker, a model builder and a Hydra callback that record which process did the work, and an
engine on which the malicious clients' replies never arrive."""

from __future__ import annotations

import gzip
import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import torch
from hydra.experimental.callback import Callback

from fedshield.attacks.base import Attack
from fedshield.config import compose_config
from fedshield.engines import FinishedJob
from fedshield.engines.local import InProcessTransport
from fedshield.models import LogisticRegression
from fedshield.server.protocol import run_jobs

TINY = [
    "dataset=mnist5k",
    "model=logistic",
    "num_clients=6",
    "num_rounds=2",
    "sample_fraction=0.5",
    "client.local_steps=3",
    "client.batch_size=16",
]


# engine=local client by client: bit for bit the Flower engine (the batched default is not).
LOCAL_PER_CLIENT = ["engine=local", "engine.batch_clients=false"]


def tiny_config(tmp_path, *overrides: str, name: str = "run"):
    return compose_config([*TINY, *overrides], output_dir=tmp_path / name)


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> None:
    """``array`` as an IDX file of unsigned bytes (MNIST's format), gzip-compressed if ``gz``."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as handle:
        handle.write(data)


def write_tiny_mnist(folder: Path, num_samples: int = 60, seed: int = 0) -> Path:
    """A random MNIST-shaped IDX test pair in ``folder`` (what ``dataset=mnist`` reads)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (num_samples, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(num_samples) % 10)
    return folder


def job_params(run_dir, job_id: int = 0) -> torch.Tensor:
    return torch.load(run_dir / "jobs" / f"job_{job_id:05d}.pt", weights_only=True)["params"]


class MalformedReplyAttack(Attack):
    """Test-only attacker whose replies are garbage that the server must drop, never crash on.

    Round r sends the kind ``KINDS[(r - 1) % len(KINDS)]``.
    """

    KINDS = ("nan", "inf", "huge", "wrong_shape", "integer")
    name = "malformed"

    def post_process(self, update, *, server_round: int, num_sampled: int):
        kind = self.KINDS[(server_round - 1) % len(self.KINDS)]
        if kind == "nan":
            return torch.full_like(update, float("nan"))
        if kind == "inf":
            return torch.full_like(update, float("inf"))
        if kind == "huge":
            return torch.full_like(update, 1e30)
        if kind == "wrong_shape":
            return update[:-3]
        return torch.ones_like(update, dtype=torch.int64)


# ------------------------------------------------------------------ which process did the work

# Directory where pid_recording_logistic writes one line per model it builds (unset: no record).
PROCESS_LOG_ENV = "FEDSHIELD_TEST_PROCESS_LOG"


def pid_recording_logistic(*, input_shape, num_classes):
    """``model=logistic`` that records which process built it (``model._target_=helpers.pid_recording_logistic``).

    Every process that trains or evaluates a job builds models, so the records show whether
    the jobs ran in this process or in worker processes. The model itself is unchanged.
    """
    log_dir = os.environ.get(PROCESS_LOG_ENV)
    if log_dir:
        with open(Path(log_dir) / f"{os.getpid()}.txt", "a") as handle:
            handle.write(f"{os.getppid()}\n")
    return LogisticRegression(input_shape=input_shape, num_classes=num_classes)


def model_builders(log_dir) -> dict[int, int]:
    """{pid: parent pid} of every process that built a model while ``log_dir`` was recording."""
    return {int(path.stem): int(path.read_text().split()[0]) for path in Path(log_dir).glob("*.txt")}


class RecordJobProcess(Callback):
    """Hydra callback (``+hydra.callbacks.x._target_=helpers.RecordJobProcess``): each job writes
    its process id, parent process id and wall-clock interval to ``job_process.json`` in its run
    folder; the launching process writes its own id to ``launcher.json`` in the sweep folder."""

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "launcher.json").write_text(json.dumps({"pid": os.getpid()}))

    def on_job_start(self, config, **kwargs) -> None:
        self.started = time.time()

    def on_job_end(self, config, job_return, **kwargs) -> None:
        record = {"pid": os.getpid(), "ppid": os.getppid(), "start": self.started, "end": time.time()}
        (Path(str(config.hydra.runtime.output_dir)) / "job_process.json").write_text(json.dumps(record))


# ---------------------------------------------------------------------- clients whose reply is absent


class AbsentRepliesTransport:
    """In-process transport on which the clients ``user_ids`` never reply (their reply is missing)."""

    def __init__(self, experiment, *, user_ids) -> None:
        self.transport, self.user_ids = InProcessTransport(experiment), frozenset(user_ids)

    def _drop(self, requests):
        kept = [r for r in requests if r.user_id not in self.user_ids]
        missing = {r.key: None for r in requests if r.user_id in self.user_ids}
        return kept, missing

    def train(self, requests):
        kept, missing = self._drop(requests)
        return {**missing, **self.transport.train(kept)}

    def craft(self, requests):
        kept, missing = self._drop(requests)
        return {**missing, **self.transport.craft(kept)}


class MaliciousAbsentEngine:
    """``engine=local`` (one process) where the malicious clients never answer: the replay of a run
    as it would be had their replies simply not arrived. Pass it as ``run(cfg, engine=...)``."""

    name = "local-malicious-absent"
    client_training = None

    def train(self, experiment, jobs, *, on_job_done, on_progress=None) -> None:
        transport = AbsentRepliesTransport(experiment, user_ids=experiment.malicious_ids)
        for state in run_jobs(experiment, list(jobs), transport, on_round=on_progress):
            on_job_done(FinishedJob(state.job.job_id, state.params, state.history))


def stamp_square_poison(target: int, *, count: int = 13):
    """Batch poisoning for the test fixtures: the first ``count`` samples get a 4x4 white square
    in the bottom-right corner and label ``target``."""

    def poison(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = x.clone(), y.clone()
        x[:count, :, -4:, -4:] = 1.0
        y[:count] = target
        return x, y

    return poison


def backdoored_logistic(poison, *, steps: int = 300, clients: int = 600):
    """A logistic regression trained on mnist5k with ``poison`` applied to every batch (the
    backdoored global model of the FLIP tests), and one benign client's ``clients`` samples."""
    import torch.nn.functional as F

    from fedshield.data import load_dataset
    from fedshield.models import LogisticRegression
    from fedshield.task.determinism import torch_generator

    torch.set_num_threads(1)
    train, _ = load_dataset("mnist5k")
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    torch.manual_seed(0)
    model = LogisticRegression(input_shape=(1, 28, 28), num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    generator = torch_generator(0)
    for _ in range(steps):
        index = torch.randint(len(y), (64,), generator=generator)
        batch_x, batch_y = poison(x[index], y[index], generator)
        optimizer.zero_grad()
        F.cross_entropy(model(batch_x), batch_y).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    index = torch.randperm(len(y), generator=torch_generator(1))[:clients]  # mnist5k is sorted by label
    return model, x[index], y[index]
