"""FLIP's inversions one by one against batched in one Adam loop, measured in one run.

Run: ``.venv/bin/python bench/bench_flip_batched.py [--clients 4] [--models cnn logistic] [overrides ...]``

For each model (``experiment=flip_mnist model=<m>``, real MNIST, the FLIP settings of
``conf/defense/flip.yaml`` unless overridden), the global model is the seeded initial model
after ``--pretrain-steps`` steps of plain SGD on the pooled client data (so that inversions
behave as after FedAvg's clean rounds). For each benign client, two sets of inversions are
prepared once (:func:`fedshield.flip.client.plan_problem`, the problems FLIP's client runs) and
run both ways on the same inputs:

- ``warm-up``: a first participation's universal inversion for every target label (fresh,
  ``inversion_steps``);
- ``round plan``: the plan of a later participation (``pairs_per_round`` pairs, both ways when
  well held), warm-started from the triggers the warm-up cached.

``sequential`` runs :func:`~fedshield.flip.inversion.invert_problem` on each problem in turn (the
reference); ``batched`` runs :func:`~fedshield.flip.inversion.invert_batch` on all of them.
Prints seconds per client for each, the ratio sequential / batched (best of ``--repeats``,
alternating the two), and their agreement: the largest absolute difference of masks and
patterns over all triggers, how many masks differ by more than ``DIVERGED`` (their paths
parted), and how many the two judge plausible differently. ``FEDSHIELD_MNIST_ROOT`` points to
the MNIST files when they are not in ``../shared/data/mnist``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A trigger whose mask moved by more than this took another path (a schedule decision
# flipped), not just float rounding. (Its pattern is no guide: where the mask is ~0 the
# pattern's gradient is ~0 and Adam's normalised steps turn rounding noise into full steps.)
DIVERGED = 1e-3
MNIST_ROOT = Path(os.environ.get("FEDSHIELD_MNIST_ROOT", REPO.parent / "shared" / "data" / "mnist"))


def run_both(model, problems, *, repeats: int):
    """Best time of each path over ``repeats`` alternations, and each path's triggers."""
    from fedshield.flip.inversion import invert_batch, invert_problem

    best = {"sequential": float("inf"), "batched": float("inf")}
    for _ in range(repeats):
        started = time.perf_counter()
        sequential = [invert_problem(model, problem) for problem in problems]
        best["sequential"] = min(best["sequential"], time.perf_counter() - started)
        started = time.perf_counter()
        batched = invert_batch(model, problems)
        best["batched"] = min(best["batched"], time.perf_counter() - started)
    return best, sequential, batched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="benign clients timed per model")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["cnn", "logistic"])
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. defense.pairs_per_round=2")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

    import numpy as np
    import torch
    import torch.nn.functional as F

    from fedshield.config import build_experiment, compose_config
    from fedshield.flip.class_distance import ClassDistanceCache
    from fedshield.flip.client import Direction, FlipRound, plan_problem, stored_triggers
    from fedshield.flip.inversion import invert_batch, invert_problem, is_plausible
    from fedshield.task.determinism import configure_torch, torch_generator

    configure_torch(threads=1)
    for model_name in args.models:
        overrides = [
            "experiment=flip_mnist",
            f"model={model_name}",
            f"dataset.root={MNIST_ROOT}",
            "defense.start_round=1",
            *args.overrides,
        ]
        experiment = build_experiment(compose_config(overrides, output_dir=REPO / "outputs" / "bench_flip_batched"))
        config = experiment.hardening.config
        job = experiment.jobs[0]
        model = experiment.initial_model(job)
        benign = [uid for uid in job.client_ids if not experiment.is_malicious(uid)][: args.clients]

        pooled = [experiment.client_tensors(uid) for uid in job.client_ids]
        x_all, y_all = torch.cat([x for x, _ in pooled]), torch.cat([y for _, y in pooled])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        generator = torch_generator(0)
        for _ in range(args.pretrain_steps):
            index = torch.randint(len(y_all), (64,), generator=generator)
            optimizer.zero_grad()
            F.cross_entropy(model(x_all[index]), y_all[index]).backward()
            optimizer.step()
        model.zero_grad(set_to_none=True)

        totals = {name: {"sequential": 0.0, "batched": 0.0} for name in ("warm-up", "round plan")}
        counts = dict.fromkeys(totals, 0)
        max_mask_diff = dict.fromkeys(totals, 0.0)
        max_pattern_diff = dict.fromkeys(totals, 0.0)
        plausible_disagreements = dict.fromkeys(totals, 0)
        plausible_counts = dict.fromkeys(totals, 0)
        diverged = dict.fromkeys(totals, 0)
        for uid in benign:
            x, y = experiment.client_tensors(uid)
            held = sorted(int(label) for label in torch.unique(y).tolist())
            generator = torch_generator(uid)
            warmup = [
                Direction(tuple(label for label in held if label != target), target, universal=True)
                for target in range(config.num_classes)
                if any(label != target for label in held)
            ]
            problems = {"warm-up": [plan_problem(config, x, y, d, stored={}, generator=generator) for d in warmup]}
            times, sequential, _ = run_both(model, problems["warm-up"], repeats=args.repeats)
            results = {"warm-up": (times, sequential)}

            # A later participation: the warm-up's plausible triggers cached, its pairs planned.
            state: dict = {"flip.participations": np.array([1])}
            cache = ClassDistanceCache.empty(config.num_classes)
            for direction, trigger in zip(warmup, sequential, strict=True):
                cache.update(trigger)
                if is_plausible(trigger, max_mask_fraction=config.max_mask_fraction):
                    state[f"flip.mask.{direction.key}"] = trigger.mask.numpy()
                    state[f"flip.pattern.{direction.key}"] = trigger.pattern.numpy()
            state.update(cache.to_state())
            later = FlipRound(config, model, x, y, server_round=2, state=state, generator=torch_generator(uid))
            stored = stored_triggers(state)  # as the round starts, before its own inversions
            plan_generator = torch_generator(uid + 1)
            problems["round plan"] = [
                plan_problem(config, x, y, d, stored=stored, generator=plan_generator) for d in later.plan
            ]
            results["round plan"] = run_both(model, problems["round plan"], repeats=args.repeats)[:2]

            for name, (times, _) in results.items():
                for path in ("sequential", "batched"):
                    totals[name][path] += times[path]
            for name, batch_problems in problems.items():
                one_by_one = [invert_problem(model, problem) for problem in batch_problems]
                together = invert_batch(model, batch_problems)
                again = invert_batch(model, batch_problems)
                if any(
                    not (torch.equal(a.mask, b.mask) and torch.equal(a.pattern, b.pattern))
                    for a, b in zip(together, again, strict=True)
                ):
                    print(f"warning: {name}: the batched path was not bit-identical run to run")
                counts[name] += len(batch_problems)
                for a, b in zip(one_by_one, together, strict=True):
                    mask_diff = float((a.mask - b.mask).abs().max())
                    max_mask_diff[name] = max(max_mask_diff[name], mask_diff)
                    max_pattern_diff[name] = max(max_pattern_diff[name], float((a.pattern - b.pattern).abs().max()))
                    diverged[name] += mask_diff > DIVERGED
                    judged = [is_plausible(t, max_mask_fraction=config.max_mask_fraction) for t in (a, b)]
                    plausible_disagreements[name] += judged[0] != judged[1]
                    plausible_counts[name] += judged[0]

        print(
            f"model={model_name}: {len(benign)} benign clients, best of {args.repeats}, "
            f"pretrain {args.pretrain_steps} SGD steps; overrides: {' '.join(overrides)}"
        )
        print(
            f"{'inversions':<11} {'per client':>10} {'sequential s':>13} {'batched s':>10} {'seq / bat':>10} "
            f"{'max|d mask|':>11} {'max|d pat|':>10} {'diverged':>9} {'plausible':>10} {'disagree':>9}"
        )
        for name, total in totals.items():
            per_client = counts[name] / len(benign)
            sequential_s, batched_s = total["sequential"] / len(benign), total["batched"] / len(benign)
            print(
                f"{name:<11} {per_client:>10.1f} {sequential_s:>13.3f} {batched_s:>10.3f} "
                f"{sequential_s / batched_s:>10.2f} {max_mask_diff[name]:>11.2e} {max_pattern_diff[name]:>10.2e} "
                f"{diverged[name]:>9d} {plausible_counts[name]:>10d} {plausible_disagreements[name]:>9d}"
            )
        print(
            f"inversion steps: fresh {config.inversion_steps}, warm {config.warm_inversion_steps}; "
            f"pairs per round {config.pairs_per_round}; samples per label: universal "
            f"{config.universal_samples_per_label}, pair {config.samples_per_label}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
