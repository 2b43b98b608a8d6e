"""Peak memory of an FLCert run with engine=local: N = 500 groups against N = 50.

Run: ``.venv/bin/python bench/bench_memory.py`` (``--quick``: 1 round of E = 2).

Each run is a whole ``fedshield.run.run`` (build, train on 2 workers, checkpoint every group,
vote, certify) in a fresh child process, on real MNIST 10k with n = 1,000 clients and the
paper's CNN, FLCert-D, 2 rounds of E = 10 (as in bench_engines.py). While it runs, this
process samples every 0.2 s the resident memory of the child and all its descendants
(``/proc``: RSS, and PSS, which splits shared pages such as torch's libraries between the
processes that map them) and keeps the peak of the sums. The child also reports
``ru_maxrss`` of itself and of its largest worker (``getrusage``); their sum over the
processes bounds the true peak from above. The two runs go one after the other in this one
invocation; their ratio shows whether memory grows with the number of groups (it should not:
a finished group is checkpointed and only its parameter vector, 0.2 MB for the CNN, is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MNIST_ROOT = "/work/shared/data/mnist"
GIB = 1024**3


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (through /proc/PID/task/TID/children)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    stack += [int(child) for child in handle.read().split()]
        except OSError:
            continue
    return found


def resident_bytes(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes; (0, 0) once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            fields = dict(line.split(":", 1) for line in handle if line.startswith(("Rss:", "Pss:")))
        return int(fields["Rss"].split()[0]) * 1024, int(fields["Pss"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0, 0


class TreeSampler(threading.Thread):
    """Peak over time of the summed RSS and PSS of a process tree."""

    def __init__(self, pid: int, *, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = self.peak_processes = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            pids = descendants(self.pid)
            sizes = [resident_bytes(pid) for pid in pids]
            self.peak_rss = max(self.peak_rss, sum(rss for rss, _ in sizes))
            self.peak_pss = max(self.peak_pss, sum(pss for _, pss in sizes))
            self.peak_processes = max(self.peak_processes, len(pids))
            self.stopped.wait(self.interval)


def child(args: argparse.Namespace) -> None:
    """One run in this process; print its wall time and getrusage peaks as JSON."""
    from fedshield.config import compose_config
    from fedshield.run import run

    common = [
        "dataset=mnist",
        f"dataset.root={args.mnist_root}",
        "model=cnn",
        f"num_clients={args.clients}",
        f"num_rounds={args.rounds}",
        f"client.local_steps={args.local_steps}",
        "sample_fraction=1.0",
        "eval_every=0",
        "engine=local",
        f"engine.workers={args.workers}",
    ]
    cfg = compose_config(
        [*common, "ensemble=flcert_d", "ensemble.grouping=hash", f"ensemble.num_groups={args.child}"],
        output_dir=args.output,
    )
    start = time.perf_counter()
    run(cfg)
    wall = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    jobs = len(list(Path(args.output, "jobs").glob("job_*.pt")))
    print(json.dumps({"jobs": jobs, "wall": wall, "maxrss_main": own, "maxrss_worker": workers}))


def measure(num_groups: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedshield-mem-") as output:
        command = [
            sys.executable, __file__, "--child", str(num_groups), "--output", output,
            "--clients", str(args.clients), "--rounds", str(args.rounds), "--local-steps", str(args.local_steps),
            "--workers", str(args.workers), "--mnist-root", args.mnist_root,
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        sampler = TreeSampler(process.pid)
        sampler.start()
        stdout, _ = process.communicate()
        sampler.stopped.set()
        sampler.join()
        if process.returncode != 0:
            raise RuntimeError(f"run with N={num_groups} failed (exit {process.returncode})")
        result = json.loads(stdout.strip().splitlines()[-1])
    result.update(peak_rss=sampler.peak_rss, peak_pss=sampler.peak_pss, processes=sampler.peak_processes)
    result["bound"] = result["maxrss_main"] + args.workers * result["maxrss_worker"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of E=2")
    parser.add_argument("--groups", type=lambda s: [int(v) for v in s.split(",")], default=[50, 500])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mnist-root", default=MNIST_ROOT)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--output", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.rounds, args.local_steps = 1, 2
    if not Path(args.mnist_root).exists():
        sys.exit(f"MNIST not found at {args.mnist_root} (--mnist-root)")
    print(
        f"fedshield run, engine=local ({args.workers} workers), MNIST 10k, n={args.clients}, CNN, "
        f"{args.rounds} rounds x E={args.local_steps}"
    )
    print(
        f"{'N':>5} {'jobs':>5} {'run s':>7} {'procs':>5} {'peak RSS GB':>11} {'peak PSS GB':>11} "
        f"{'maxrss main GB':>14} {'maxrss worker GB':>16} {'bound GB':>8}"
    )
    results = {}
    for num_groups in args.groups:
        r = results[num_groups] = measure(num_groups, args)
        print(
            f"{num_groups:>5} {r['jobs']:>5} {r['wall']:>7.1f} {r['processes']:>5} {r['peak_rss'] / GIB:>11.2f} "
            f"{r['peak_pss'] / GIB:>11.2f} {r['maxrss_main'] / GIB:>14.2f} {r['maxrss_worker'] / GIB:>16.2f} "
            f"{r['bound'] / GIB:>8.2f}",
            flush=True,
        )
    low, high = min(results), max(results)
    print(
        f"peak RSS at N={high}: {results[high]['peak_rss'] / GIB:.2f} GB "
        f"(PSS {results[high]['peak_pss'] / GIB:.2f} GB); "
        f"ratio N={high} / N={low}: {results[high]['peak_rss'] / results[low]['peak_rss']:.2f}x"
    )


if __name__ == "__main__":
    main()
