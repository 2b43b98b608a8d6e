"""FLIP's cost on a benign client, over FedAvg's, measured in one run.

Run: ``.venv/bin/python bench/bench_flip_cost.py [--clients 6] [overrides ...]``

Builds ``experiment=flip_mnist`` (real MNIST from ``../shared/data/mnist``, the FLCert CNN, the
FLIP settings of ``fedshield/conf/defense/flip.yaml`` unless overridden) and times, for the same benign
clients and the same global model (the seeded initial model), one round of local training:

- ``fedavg``: plain local training (``defense=none``);
- ``flip first``: FLIP in a client's first participation (the universal warm-up over every
  target label, then hardening with re-inversions during training);
- ``flip later``: FLIP in a later participation (pairs from the class-distance cache,
  warm-started from the cached triggers).

It prints seconds per client round for each, the ratios to FedAvg, and the number of
inversions and inversion steps behind them. Alternates the paths client by client and keeps
each client's best of ``--repeats``, so machine noise hits all paths alike.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MNIST_ROOT = REPO.parent / "shared" / "data" / "mnist"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=6, help="benign clients timed")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. defense.reinvert_every=4")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

    from fedshield.client.work import train_step
    from fedshield.config import build_experiment, compose_config
    from fedshield.models.params import get_flat_params
    from fedshield.task.determinism import configure_torch
    from fedshield.task.messages import TrainRequest

    configure_torch(threads=1)
    overrides = ["experiment=flip_mnist", f"dataset.root={MNIST_ROOT}", "defense.start_round=1", *args.overrides]
    flip = build_experiment(compose_config(overrides, output_dir=REPO / "outputs" / "bench_flip_cost"))
    fedavg = replace(flip, hardening=None, rejection=None, _client_tensors={}, _work_models={})
    job = flip.jobs[0]
    params = get_flat_params(flip.initial_model(job))
    benign = [uid for uid in job.client_ids if not flip.is_malicious(uid)][: args.clients]

    def timed(experiment, uid: int, server_round: int, state: dict) -> tuple[float, dict, dict]:
        request = TrainRequest(job, uid, server_round, params, 10)
        started = time.perf_counter()
        reply, new_state = train_step(experiment, request, state)
        return time.perf_counter() - started, new_state, reply.metrics

    best = {"fedavg": [], "flip first": [], "flip later": []}
    inversions = {"flip first": [], "flip later": []}
    for uid in benign:
        timed(fedavg, uid, 1, {})  # warm-up: client tensors, kernels
        times = {name: float("inf") for name in best}
        for _ in range(args.repeats):
            times["fedavg"] = min(times["fedavg"], timed(fedavg, uid, 1, {})[0])
            first, state, first_metrics = timed(flip, uid, 1, {})
            times["flip first"] = min(times["flip first"], first)
            later, _, later_metrics = timed(flip, uid, 2, state)
            times["flip later"] = min(times["flip later"], later)
        for name, value in times.items():
            best[name].append(value)
        inversions["flip first"].append(first_metrics.get("flip_inversions", 0.0))
        inversions["flip later"].append(later_metrics.get("flip_inversions", 0.0))

    base = sum(best["fedavg"]) / len(benign)
    print(f"{len(benign)} benign clients, best of {args.repeats}; overrides: {' '.join(overrides)}")
    print(f"{'path':<12} {'s / client round':>17} {'x FedAvg':>9} {'inversions':>11}")
    for name, values in best.items():
        mean = sum(values) / len(values)
        count = sum(inversions[name]) / len(values) if name in inversions else 0.0
        print(f"{name:<12} {mean:>17.3f} {mean / base:>9.1f} {count:>11.1f}")
    config = flip.hardening.config if flip.hardening is not None else None
    if config is not None:
        print(
            f"inversion steps: fresh {config.inversion_steps}, warm {config.warm_inversion_steps}; "
            f"re-inversion every {config.reinvert_every} batches; local steps {flip.training.local_steps}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
