"""engine=local against engine=flower: group-training throughput of an FLCert ensemble.

Run: ``.venv/bin/python bench/bench_engines.py`` (about 10 minutes on 2 cores) or
``--quick`` (about 2 minutes).

Scale (default): real MNIST 10k (8,000 training images after the seeded split), n = 1,000
clients of 8 images each (IID), the paper's CNN, N = 50, 200 and 500 groups of about n / N
clients, every client of a group trains every round (``sample_fraction=1.0``), 2 rounds of
E = 10 local SGD steps (the config default; a batch is a client's 8 images), FedAvg in each group,
``eval_every=0`` (each group is evaluated once, after its last round). FLCert-D's keyed hash
leaves some groups empty when n / N is small (75 of 500 at N = 500: about N e^(-n/N)); they
train no model, so the table shows the number of trained groups (jobs) beside N. Every round
trains all 1,000 clients whatever N is; only the number and size of the jobs change.
``--quick``: n = 200 clients, N = 10, 40, 100 (the same group sizes), 1 round.

Both engines run the same jobs side by side in this one process: engine=local (2 worker
processes, one torch thread each) before and after engine=flower (Flower ``run_simulation``
on Ray, 2 CPUs, one SuperNode per client, ``groups_per_wave`` = 50 groups per wave, the
engine's default: 500 made the N = 500 run 1.6x slower, 100 was as fast as 50); the local time
is the better of its two runs. Times cover ``engine.train`` only (worker or Ray start-up,
training, aggregation, the final evaluation of each group), not loading data or certifying.
Throughput is samples through local SGD per second: the sum over rounds and sampled clients
of ``local_steps * min(batch_size, client samples)``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fedshield.config import build_experiment, compose_config
from fedshield.engines.flower.simulation import FlowerEngine
from fedshield.engines.local import LocalEngine
from fedshield.server.rounds import sample_clients
from fedshield.task.determinism import configure_torch

MNIST_ROOT = "/work/shared/data/mnist"
OUTPUT_DIR = "/tmp/fedshield-bench"


def build(num_groups: int, args: argparse.Namespace):
    return build_experiment(
        compose_config(
            [
                "dataset=mnist",
                f"dataset.root={args.mnist_root}",
                "model=cnn",
                f"num_clients={args.clients}",
                "ensemble=flcert_d",
                "ensemble.grouping=hash",  # the grouping bench/README.md's numbers were measured with
                f"ensemble.num_groups={num_groups}",
                f"num_rounds={args.rounds}",
                f"client.local_steps={args.local_steps}",
                "sample_fraction=1.0",
                "eval_every=0",
            ],
            output_dir=OUTPUT_DIR,
        )
    )


def workload(experiment) -> tuple[int, int]:
    """(client updates, samples through local SGD) over all rounds and groups."""
    training = experiment.training
    updates = samples = 0
    for job in experiment.jobs:
        for server_round in range(1, experiment.num_rounds + 1):
            for uid in sample_clients(job, server_round, num_sampled=experiment.num_sampled(job)):
                updates += 1
                samples += training.local_steps * min(training.batch_size, experiment.num_examples(uid))
    return updates, samples


def timed_train(engine, experiment) -> float:
    finished: list[int] = []
    start = time.perf_counter()
    engine.train(experiment, list(experiment.jobs), on_job_done=lambda job: finished.append(job.job_id))
    elapsed = time.perf_counter() - start
    if sorted(finished) != [job.job_id for job in experiment.jobs]:
        raise RuntimeError(f"{type(engine).__name__} finished {len(finished)} of {len(experiment.jobs)} groups")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n=200 clients, N=10,40,100, 1 round")
    parser.add_argument("--groups", type=lambda s: [int(v) for v in s.split(",")], default=None)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="engine=local worker processes")
    parser.add_argument("--groups-per-wave", type=int, default=50, help="engine=flower (its default)")
    parser.add_argument("--mnist-root", default=MNIST_ROOT)
    args = parser.parse_args()
    if args.quick:
        args.clients, args.rounds = 200, 1
        args.groups = args.groups or [10, 40, 100]
    args.groups = args.groups or [50, 200, 500]
    if not Path(args.mnist_root).exists():
        sys.exit(f"MNIST not found at {args.mnist_root} (--mnist-root)")
    logging.basicConfig(level=logging.WARNING)
    configure_torch(threads=1)

    print(
        f"MNIST 10k, n={args.clients} clients, CNN, {args.rounds} rounds x E={args.local_steps} local steps, "
        f"all clients of a group per round; local: {args.workers} workers; "
        f"flower: Ray 2 CPUs, groups_per_wave={args.groups_per_wave}"
    )
    rows = []
    for num_groups in args.groups:
        experiment = build(num_groups, args)
        updates, samples = workload(experiment)
        local = LocalEngine(workers=args.workers)
        local_first = timed_train(local, experiment)
        flower = timed_train(FlowerEngine(groups_per_wave=args.groups_per_wave), experiment)
        local_time = min(local_first, timed_train(local, experiment))
        rows.append((num_groups, len(experiment.jobs), updates, samples, local_time, flower))
        print(f"  N={num_groups}: local {local_time:.1f} s, flower {flower:.1f} s", flush=True)

    print()
    print(
        f"{'N':>5} {'jobs':>5} {'updates':>8} {'SGD samples':>11} {'local s':>8} {'flower s':>9} "
        f"{'local samples/s':>15} {'flower samples/s':>16} {'flower/local':>12} {'flower ms/update':>16}"
    )
    for num_groups, num_jobs, updates, samples, local_time, flower in rows:
        print(
            f"{num_groups:>5} {num_jobs:>5} {updates:>8,} {samples:>11,} {local_time:>8.1f} {flower:>9.1f} "
            f"{samples / local_time:>15,.0f} {samples / flower:>16,.0f} {flower / local_time:>11.1f}x "
            f"{1000 * flower / updates:>16.1f}"
        )


if __name__ == "__main__":
    main()
