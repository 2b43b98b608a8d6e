"""engine=local per-client vs batched clients (``engine.batch_clients``), same run, per model.

Run: ``PYTHONPATH=src .venv/bin/python bench/bench_batched.py`` (a few minutes on this machine:
real MNIST 10k, n = 200 clients, FLCert-D N = 50, 5 rounds) or ``--paper`` for issue #16's
config (n = 1,000, N = 500, 30 rounds; about 10 minutes per path and model here).

Config: Fang non-IID q = 0.5, every client each round, E = 5 local steps of batch 8, the MLP
784-128-10 and logistic regression, one process with one torch thread (``engine.workers=1``),
``eval_every=0``. For each model both paths run the whole pipeline (``fedshield.run.run``); the
training phase (``LocalEngine.train``) and the whole run are timed, wall and CPU. Printed per
model: seconds, the ratio, the chunk size, the matmul FLOPs of local SGD (forward 2BIO per layer, backward 2BIO for
the weight gradient plus 2BIO for the input gradient except at the first layer), achieved
GFLOP/s, their ratio to this process's single-thread SGEMM rate (1024^3 ``torch.mm``, the best
of 20 products, measured before, between and after the runs), the training time over the FLOP bound (those
FLOPs at that rate), CA@0/5/10/20/50 of both paths, the worst relative L2 distance of a group's
parameters and the share of equal predictions. The timed phase also evaluates each group once,
so the bound of all its arithmetic adds those test-set passes; both ratios are printed.
``--sweep`` also times one round of all clients through :func:`train_clients_batched` at chunk
sizes 1..256 (how the chunk size was chosen; the direct and the deferred chunks alike). The
chunk column reads direct/deferred.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedshield.client import batched
from fedshield.client.batched import defers_first_layer, linear_stack, train_clients_batched
from fedshield.config import build_experiment, compose_config
from fedshield.engines.local import LocalEngine
from fedshield.run import run
from fedshield.server.protocol import start_jobs, train_requests
from fedshield.server.rounds import sample_clients
from fedshield.task.determinism import configure_torch

MNIST_ROOT = "/work/shared/data/mnist"
OUTPUT_DIR = Path("/tmp/fedshield-bench-batched")
RADII = (0, 5, 10, 20, 50)
MODELS = {"mlp": ["model=mlp", "model.hidden=[128]"], "logistic": ["model=logistic"]}


class TimedEngine:
    """A LocalEngine whose ``train`` (the training phase) is timed."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.name = engine.name
        self.wall = self.cpu = 0.0

    @property
    def client_training(self) -> dict | None:
        return self.engine.client_training

    def train(self, experiment, jobs, *, on_job_done, on_progress=None) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.engine.train(experiment, jobs, on_job_done=on_job_done, on_progress=on_progress)
        self.wall, self.cpu = time.perf_counter() - wall, time.process_time() - cpu


def overrides(args: argparse.Namespace, model: str) -> list[str]:
    return [
        "dataset=mnist",
        f"dataset.root={args.mnist_root}",
        *MODELS[model],
        f"num_clients={args.clients}",
        "partition=fang",
        "partition.q=0.5",
        "ensemble=flcert_d",
        f"ensemble.num_groups={args.groups}",
        f"num_rounds={args.rounds}",
        "client.local_steps=5",
        "client.batch_size=8",
        "sample_fraction=1.0",
        "eval_every=0",
        "engine=local",
        "engine.workers=1",
    ]


def sgd_flops(experiment) -> int:
    """Matmul FLOPs of every client's local SGD over the run (see the module docstring)."""
    stack = linear_stack(experiment.new_model())
    assert stack is not None
    training = experiment.training
    per_sample = sum(2 * out * inp * (2 if layer == 0 else 3) for layer, (out, inp, _) in enumerate(stack.layers))
    samples = 0
    for job in experiment.jobs:
        for server_round in range(1, experiment.num_rounds + 1):
            for uid in sample_clients(job, server_round, num_sampled=experiment.num_sampled(job)):
                samples += training.local_steps * min(training.batch_size, experiment.num_examples(uid))
    return per_sample * samples


def batched_flops(experiment) -> int:
    """Matmul FLOPs the batched path does: :func:`sgd_flops`, except that a client on the
    deferred path (:func:`defers_first_layer`) does ``2 (2 m out D + m^2 D + 2 s B m out)`` for
    its first layer (``X W_0^T``, the final ``A^T X``, the Gram matrix, the steps' corrections)."""
    stack = linear_stack(experiment.new_model())
    assert stack is not None
    training = experiment.training
    (out, inp, _), later = stack.layers[0], stack.layers[1:]
    later_per_sample = sum(2 * o * i * 3 for o, i, _ in later)
    total = 0
    for job in experiment.jobs:
        for server_round in range(1, experiment.num_rounds + 1):
            for uid in sample_clients(job, server_round, num_sampled=experiment.num_sampled(job)):
                m = experiment.num_examples(uid)
                batch = min(training.batch_size, m)
                samples = training.local_steps * batch
                if training.plain_sgd and defers_first_layer(
                    stack, local_steps=training.local_steps, batch=batch, count=m
                ):
                    first = 2 * (2 * m * out * inp + m * m * inp + 2 * samples * m * out)
                else:
                    first = samples * 2 * out * inp * 2
                total += first + samples * later_per_sample
    return total


def sgemm_gflops(size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def sweep_chunks(args: argparse.Namespace, model: str) -> None:
    experiment = build_experiment(compose_config(overrides(args, model), output_dir=OUTPUT_DIR / "sweep"))
    states = start_jobs(experiment, list(experiment.jobs))
    requests = train_requests(states, {s.job.job_id: tuple(s.job.client_ids) for s in states}, 1)
    stack = linear_stack(experiment.new_model())
    assert stack is not None
    train_clients_batched(experiment, requests, stack, chunk_size=8)  # warm the client tensors
    chosen = batched.DEFERRED_CHUNK
    for chunk in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        batched.DEFERRED_CHUNK = chunk  # clients on the deferred path
        seconds = min(
            _timed(lambda c=chunk: train_clients_batched(experiment, requests, stack, chunk_size=c)) for _ in range(3)
        )
        print(f"  sweep {model}: chunk {chunk:3d}: {seconds:.3f} s for {len(requests)} clients x 1 round")
    batched.DEFERRED_CHUNK = chosen


def compare(args: argparse.Namespace, model: str, sgemm: float) -> dict:
    results = {}
    for path, setting in (("per-client", "false"), ("batched", "auto")):
        sgemm = max(sgemm, sgemm_gflops())  # the machine's best rate over the run (it is shared)
        cfg = compose_config(
            [*overrides(args, model), f"engine.batch_clients={setting}"], output_dir=OUTPUT_DIR / f"{model}-{path}"
        )
        engine = TimedEngine(LocalEngine(workers=1, batch_clients=setting))
        wall, cpu = time.perf_counter(), time.process_time()
        summary = run(cfg, engine=engine)
        results[path] = {
            "wall": engine.wall,
            "cpu": engine.cpu,
            "run_wall": time.perf_counter() - wall,
            "run_cpu": time.process_time() - cpu,
            "summary": summary,
            "dir": Path(str(cfg.output_dir)),
        }
    experiment = build_experiment(compose_config(overrides(args, model), output_dir=OUTPUT_DIR / "flops"))
    flops = sgd_flops(experiment)
    sgemm = max(sgemm, sgemm_gflops())
    one, two = results["per-client"], results["batched"]
    print(f"\n{model}: {len(experiment.jobs)} groups, {args.clients} clients, {args.rounds} rounds")
    print(f"  SGD matmul work: {flops / 1e9:.1f} GFLOP; single-thread SGEMM {sgemm:.1f} GFLOP/s (best of the run)")
    bound = flops / (sgemm * 1e9)
    done = batched_flops(experiment)
    print(
        f"  the batched path does {done / 1e9:.1f} GFLOP of them ({done / flops:.2f}x: clients with few "
        "samples keep the first layer in factored form)"
    )
    stack = linear_stack(experiment.new_model())
    assert stack is not None
    # Each group's one pass over the test set (the votes), which the training phase also does.
    eval_flops = len(experiment.jobs) * len(experiment.test) * sum(2 * out * inp for out, inp, _ in stack.layers)
    bound_with_eval = (flops + eval_flops) / (sgemm * 1e9)  # all the arithmetic the timed phase does
    print(
        f"  FLOP bound (SGD matmuls at the SGEMM rate): {bound:.2f} s; with each group's test-set pass "
        f"({eval_flops / 1e9:.1f} GFLOP more): {bound_with_eval:.2f} s"
    )
    for path, result in results.items():
        rate = flops / result["cpu"] / 1e9
        training = result["summary"]["client_training"]
        chunk = training.get("chunk_size")
        if training.get("deferred_chunk_size"):
            chunk = f"{chunk}/{training['deferred_chunk_size']}"
        print(
            f"  {path:10s}: training {result['wall']:7.2f} s wall, {result['cpu']:7.2f} s CPU, chunk {chunk}, "
            f"{rate:5.2f} GFLOP/s (CPU), {rate / sgemm:.3f} of SGEMM; "
            f"{result['wall'] / bound:.1f}x (wall) / {result['cpu'] / bound:.1f}x (CPU) the FLOP bound, "
            f"{result['cpu'] / bound_with_eval:.2f}x (CPU) with the test-set passes; "
            f"whole run {result['run_wall']:.2f} s wall, {result['run_cpu']:.2f} s CPU"
        )
    print(f"  ratio per-client / batched: {one['wall'] / two['wall']:.2f}x wall, {one['cpu'] / two['cpu']:.2f}x CPU")
    for path, result in results.items():
        ca = result["summary"]["certified_accuracy"]
        print(f"  {path:10s}: " + ", ".join(f"CA@{m} {ca.get(str(m), 0.0):.4f}" for m in RADII))
    worst = max(
        float((a - b).norm() / a.norm())
        for a, b in (
            (
                torch.load(one["dir"] / "jobs" / name, weights_only=True)["params"],
                torch.load(two["dir"] / "jobs" / name, weights_only=True)["params"],
            )
            for name in sorted(p.name for p in (one["dir"] / "jobs").glob("job_*.pt"))
        )
    )
    agree = float(np.mean(np.load(one["dir"] / "predictions.npy") == np.load(two["dir"] / "predictions.npy")))
    print(f"  groups: worst relative L2 distance {worst:.2e}; equal predictions {agree:.5f}")
    return {
        "ratio_wall": one["wall"] / two["wall"],
        "ratio_cpu": one["cpu"] / two["cpu"],
        "batched_cpu_over_flop_bound": two["cpu"] / bound,
        "batched_wall_over_flop_bound": two["wall"] / bound,
        "batched_cpu_over_bound_with_eval": two["cpu"] / bound_with_eval,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="n=1000, N=500, 30 rounds (issue #16)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sweep", action="store_true", help="also time chunk sizes 1..256")
    parser.add_argument("--mnist-root", default=MNIST_ROOT)
    args = parser.parse_args()
    args.clients, args.groups, args.rounds = (1000, 500, 30) if args.paper else (200, 50, 5)
    configure_torch(threads=1)
    sgemm = sgemm_gflops()
    ratios = {}
    for model in args.models:
        if args.sweep:
            sweep_chunks(args, model)
        ratios[model] = compare(args, model, sgemm)
    print("\n" + json.dumps(ratios))


if __name__ == "__main__":
    main()
