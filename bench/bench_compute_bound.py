"""engine=local against the compute bound: a bare torch loop doing the same SGD steps.

Run: ``.venv/bin/python bench/bench_compute_bound.py [--vmap]`` (about 10 minutes on 2 cores;
``--quick``: the first 20 groups, one repeat, about 2 minutes).

Scale: real MNIST 10k (8,000 training images), n = 1,000 clients of 8 images, the paper's
CNN (``--model mlp``: the two-layer MLP), FLCert-D with N = 50 and 500 groups (at N = 500,
425 non-empty groups of 1 to 8 clients), every client of a group trains every round, 2 rounds
of E = 10 steps, the first 100 groups (``--max-jobs``). Both sides make
exactly the same forward/backward/``optimizer.step`` calls per group: for every round and
client, E steps on batches of ``min(batch_size, client samples)`` = 8.

- **engine**: the engine path (``train_one_job``, which ``LocalEngine`` runs in each worker:
  job runner, seeded sampling and batch order, screening, FedAvg, and the final evaluation of
  the group's model on the 2,000 test images; ``eval_every=0``).
- **bare**: per group one model and the clients' tensors, then for each round and client:
  copy the global weights in, a fresh SGD, E steps, and a plain average; nothing else.
- **bare+eval**: the bare loop plus the same one test-set pass per group
  (``predict_logits``), i.e. the same outputs as the engine.

All three are measured side by side in this one run, twice: in this process with one torch
thread (``workers=1``), interleaved group by group, per group the best of ``--repeats``
(CPU time is the headline, wall time is shown too; the machine is shared); then whole runs
with ``--workers`` processes on both sides, worker start-up included, alternated, best of
``--repeats`` (CPU time counts this process plus the joined workers, ``RUSAGE_CHILDREN``).

``--vmap`` also measures training G models at once with ``torch.func`` (``functional_call``
over stacked parameters under ``vmap``) against G sequential models, for the CNN and an MLP.
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from fedshield.config import build_experiment, compose_config, experiment_from_yaml
from fedshield.engines.local import LocalEngine, train_one_job
from fedshield.server.rounds import sample_clients
from fedshield.task.determinism import configure_torch
from fedshield.task.training import predict_logits

MNIST_ROOT = "/work/shared/data/mnist"
GOAL = 1.3
OUTPUT_DIR = "/tmp/fedshield-bench"


def overrides(args: argparse.Namespace, ensemble: list[str]) -> list[str]:
    return [
        "dataset=mnist",
        f"dataset.root={args.mnist_root}",
        f"model={args.model}",
        f"num_clients={args.clients}",
        *ensemble,
        f"num_rounds={args.rounds}",
        f"client.local_steps={args.local_steps}",
        "sample_fraction=1.0",
        "eval_every=0",
        "engine=local",
        f"engine.workers={args.workers}",
    ]


def build(args: argparse.Namespace, num_groups: int):
    # hash: the grouping bench/README.md's numbers were measured with
    ensemble = ["ensemble=flcert_d", "ensemble.grouping=hash", f"ensemble.num_groups={num_groups}"]
    return build_experiment(compose_config(overrides(args, ensemble), output_dir=OUTPUT_DIR))


def sgd_samples(experiment, jobs) -> int:
    """Samples pushed through local SGD: sum over rounds and sampled clients of E * batch."""
    training = experiment.training
    total = 0
    for job in jobs:
        for server_round in range(1, experiment.num_rounds + 1):
            for uid in sample_clients(job, server_round, num_sampled=experiment.num_sampled(job)):
                total += training.local_steps * min(training.batch_size, experiment.num_examples(uid))
    return total


# ---------------------------------------------------------------- bare loop (the compute bound)


def bare_train_group(experiment, job, *, evaluate: bool) -> torch.Tensor:
    """Same forward/backward/step calls as the engine for one group; no framework around them."""
    training = experiment.training
    model = experiment.model_builder(input_shape=experiment.train.input_shape, num_classes=experiment.train.num_classes)
    model = model.to(device=experiment.device, dtype=experiment.dtype)
    params = list(model.parameters())
    global_params = [p.detach().clone() for p in params]
    num_sampled = experiment.num_sampled(job)
    clients = [experiment.client_tensors(uid) for uid in job.client_ids[:num_sampled]]
    generator = torch.Generator().manual_seed(job.seed)
    model.train()
    for _ in range(experiment.num_rounds):
        total = [torch.zeros_like(p) for p in params]
        for x, y in clients:
            with torch.no_grad():
                torch._foreach_copy_(params, global_params)
            optimizer = torch.optim.SGD(params, lr=training.learning_rate)
            batch = min(training.batch_size, len(y))
            for _ in range(training.local_steps):
                index = torch.randperm(len(y), generator=generator)[:batch]
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[index]), y[index]).backward()
                optimizer.step()
            torch._foreach_add_(total, [p.detach() for p in params])
        global_params = [t / len(clients) for t in total]
    if evaluate:
        with torch.no_grad():
            torch._foreach_copy_(params, global_params)
        predict_logits(model, experiment.test_tensors[0])
    return torch.cat([p.reshape(-1) for p in global_params])


def _bare_worker_init() -> None:
    configure_torch(threads=1)


def _bare_worker(config_yaml: str, job, evaluate: bool) -> int:
    bare_train_group(experiment_from_yaml(config_yaml), job, evaluate=evaluate)
    return job.job_id


def bare_train(experiment, jobs, *, workers: int, evaluate: bool) -> None:
    if workers == 1:
        for job in jobs:
            bare_train_group(experiment, job, evaluate=evaluate)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_bare_worker_init) as pool:
        list(pool.map(_bare_worker, [experiment.config_yaml] * len(jobs), jobs, [evaluate] * len(jobs)))


def engine_train(experiment, jobs, *, workers: int) -> None:
    finished = []
    LocalEngine(workers=workers).train(experiment, list(jobs), on_job_done=lambda job: finished.append(job.job_id))
    assert len(finished) == len(jobs)


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (a pool's workers, once joined)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(function) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    function()
    return time.perf_counter() - wall, cpu_seconds() - cpu


SIDES = ("engine", "bare", "bare+eval")


def in_process(experiment, jobs, repeats: int) -> dict[str, tuple[float, float]]:
    """workers=1: the sides interleaved job by job; per job the best of ``repeats``; summed."""
    sides = {
        "engine": lambda job: train_one_job(experiment, job),
        "bare": lambda job: bare_train_group(experiment, job, evaluate=False),
        "bare+eval": lambda job: bare_train_group(experiment, job, evaluate=True),
    }
    best = {name: [(math.inf, math.inf)] * len(jobs) for name in sides}
    for repeat in range(repeats):
        for index, job in enumerate(jobs):
            order = SIDES[(index + repeat) % 3 :] + SIDES[: (index + repeat) % 3]
            for name in order:
                wall, cpu = measure(functools.partial(sides[name], job))
                old_wall, old_cpu = best[name][index]
                best[name][index] = (min(old_wall, wall), min(old_cpu, cpu))
    return {name: (sum(w for w, _ in values), sum(c for _, c in values)) for name, values in best.items()}


def pooled(experiment, jobs, repeats: int, workers: int) -> dict[str, tuple[float, float]]:
    """``workers`` processes on both sides (start-up included): whole runs alternated, best of ``repeats``."""
    sides = {
        "engine": lambda: engine_train(experiment, jobs, workers=workers),
        "bare": lambda: bare_train(experiment, jobs, workers=workers, evaluate=False),
        "bare+eval": lambda: bare_train(experiment, jobs, workers=workers, evaluate=True),
    }
    best = dict.fromkeys(sides, (math.inf, math.inf))
    for repeat in range(repeats):
        for name in SIDES[repeat % 3 :] + SIDES[: repeat % 3]:
            wall, cpu = measure(sides[name])
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def compute_bound(args: argparse.Namespace) -> list[tuple[float, float]]:
    print(
        f"MNIST 10k (8,000 train), n={args.clients} clients, model={args.model}, {args.rounds} rounds, "
        f"E={args.local_steps} local steps, every client of a group each round, best of {args.repeats}"
    )
    print(
        "engine = LocalEngine; bare = the same SGD steps in a plain torch loop; "
        "bare+eval = bare + the engine's final test-set pass per group"
    )
    print(
        f"{'N':>5} {'groups':>6} {'workers':>7} {'SGD samples':>11} {'time':>5} "
        f"{'engine s':>9} {'bare s':>8} {'bare+eval s':>11} {'engine/bare':>11} {'engine/bare+eval':>16}"
    )
    ratios = []
    for num_groups in args.groups:
        experiment = build(args, num_groups)
        jobs = experiment.jobs[: args.max_jobs] if args.max_jobs else experiment.jobs
        samples = sgd_samples(experiment, jobs)
        train_one_job(experiment, jobs[0])  # warm-up: kernels, client tensors, test set
        bare_train_group(experiment, jobs[0], evaluate=True)
        runs = {1: in_process(experiment, jobs, args.repeats)}
        if args.workers > 1:
            runs[args.workers] = pooled(experiment, jobs, args.repeats, args.workers)
        for workers, best in runs.items():
            for column, kind in ((1, "cpu"), (0, "wall")):
                engine, bare, bare_eval = (best[name][column] for name in SIDES)
                if kind == "cpu":
                    ratios.append((engine / bare, engine / bare_eval))
                print(
                    f"{num_groups:>5} {len(jobs):>6} {workers:>7} {samples:>11,} {kind:>5} "
                    f"{engine:>9.2f} {bare:>8.2f} {bare_eval:>11.2f} "
                    f"{engine / bare:>10.2f}x {engine / bare_eval:>15.2f}x",
                    flush=True,
                )
    for index, against in enumerate(("bare (training only)", "bare+eval (same outputs)")):
        worst = max(pair[index] for pair in ratios)
        verdict = "within" if worst <= GOAL else "NOT within"
        print(f"worst CPU-time ratio engine / {against}: {worst:.2f}x, {verdict} the {GOAL}x goal")
    return ratios


# ---------------------------------------------------------------- batching groups with torch.func


def vmap_pair(make, count: int, steps: int, batch: int):
    """(sequential, batched): SGD on ``count`` models one by one, and all at once under vmap."""
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    models = [make() for _ in range(count)]
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(count, steps, batch, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (count, steps, batch), generator=generator)

    def sequential() -> None:
        for g, model in enumerate(models):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
            for step in range(steps):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[g, step]), y[g, step]).backward()
                optimizer.step()

    params, buffers = stack_module_state(models)
    base = make().to("meta")

    def loss(p, b, xb, yb):
        return F.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    step_fn = vmap(grad_and_value(loss))

    def batched() -> None:
        state = params
        for step in range(steps):
            grads, _ = step_fn(state, buffers, x[:, step], y[:, step])
            state = {k: v - 0.05 * grads[k] for k, v in state.items()}

    return sequential, batched


def vmap_comparison(args: argparse.Namespace) -> None:
    """G models trained sequentially vs all G at once under vmap: same steps, same batch size."""
    from fedshield.models import MLP, MnistCNN

    steps, batch = args.local_steps, 8
    print(f"\nbatching G groups with torch.func.vmap: {steps} SGD steps of batch {batch} per model, CPU s, one thread")
    print(f"{'model':>6} {'G':>4} {'sequential s':>12} {'vmap s':>8} {'sequential/vmap':>15}")
    makers = {
        "cnn": lambda: MnistCNN(input_shape=(1, 28, 28)),
        "mlp": lambda: MLP(input_shape=(1, 28, 28), num_classes=10),
    }
    for name, make in makers.items():
        for count in args.vmap_groups:
            sequential, batched = vmap_pair(make, count, steps, batch)
            seq_time = vmap_time = math.inf
            for _ in range(args.repeats):
                seq_time = min(seq_time, measure(sequential)[1])
                vmap_time = min(vmap_time, measure(batched)[1])
            print(f"{name:>6} {count:>4} {seq_time:>12.3f} {vmap_time:>8.3f} {seq_time / vmap_time:>14.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the first 20 groups only, one repeat")
    parser.add_argument("--groups", type=lambda s: [int(v) for v in s.split(",")], default=[50, 500])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--model", default="cnn", choices=["cnn", "mlp"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-jobs", type=int, default=100, help="train only the first groups (0: all)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vmap", action="store_true", help="also measure torch.func batching of groups")
    parser.add_argument("--vmap-groups", type=lambda s: [int(v) for v in s.split(",")], default=[8, 32])
    parser.add_argument("--mnist-root", default=MNIST_ROOT)
    args = parser.parse_args()
    if args.quick:
        args.max_jobs, args.repeats = 20, 1
    if not Path(args.mnist_root).exists():
        sys.exit(f"MNIST not found at {args.mnist_root} (--mnist-root)")
    configure_torch(threads=1)
    compute_bound(args)
    if args.vmap:
        vmap_comparison(args)


if __name__ == "__main__":
    main()
