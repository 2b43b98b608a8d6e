"""Benchmark fedshield.certify on 10,000 inputs with 500 votes each.

Run: ``.venv/bin/python bench/bench_certify.py``. Votes are realistic: per input a top label
with a 70-90% share and the rest spread over the other labels by a Dirichlet draw. Each
certifier is timed cold (caches of binomial coefficients cleared) and warm (best of 3).
The naive baseline is a per-input linear search over m with the same exact arithmetic; it
runs on a subset of inputs and its time is extrapolated linearly to all inputs.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np

from fedshield.certify import flcert_d, flcert_p, flcert_p_bounds
from fedshield.certify.flcert_p import _thresholds

NUM_INPUTS, NUM_VOTES, NUM_LABELS, ALPHA = 10_000, 500, 10, 0.001
NAIVE_SUBSET = 500


def realistic_votes(rng: np.random.Generator) -> np.ndarray:
    top = rng.uniform(0.7, 0.9, NUM_INPUTS)
    rest = rng.dirichlet(np.ones(NUM_LABELS - 1), NUM_INPUTS) * (1 - top)[:, None]
    probs = np.concatenate([top[:, None], rest], axis=1)
    for row in probs:
        rng.shuffle(row)  # the top label is not always label 0
    return rng.multinomial(NUM_VOTES, probs)


def timed(function, *, repeats: int = 3):
    _thresholds.cache_clear()
    start = time.perf_counter()
    result = function()
    cold = time.perf_counter() - start
    warm = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        warm = min(warm, time.perf_counter() - start)
    return result, cold, warm


def naive_levels(p_y_lower, p_z_upper, n: int, k: int) -> list[int]:
    """Linear search over m per input, exact integers, no caching or deduplication."""
    levels = []
    for lower, upper in zip(p_y_lower.tolist(), p_z_upper.tolist(), strict=True):
        if not lower > upper:
            levels.append(-1)
            continue
        total = math.comb(n, k)
        gap = math.ceil(Fraction(lower) * total) - math.floor(Fraction(upper) * total)
        m = 0
        while m + 1 <= n - k and gap > 2 * (total - math.comb(n - m - 1, k)):
            m += 1
        levels.append(m)
    return levels


def main() -> None:
    counts = realistic_votes(np.random.default_rng(0))
    print(f"{NUM_INPUTS} inputs, {NUM_VOTES} votes each, {NUM_LABELS} labels, alpha={ALPHA}")
    print("goal: under 1 s")
    (_, levels_d), cold, warm = timed(lambda: flcert_d(counts))
    print(f"flcert_d                     cold {cold:.4f} s  warm {warm:.4f} s  max level {levels_d.max()}")
    for n, k in ((1000, 10), (10_000, 5), (2000, 500)):
        print(f"-- n={n} clients, k={k} per group, C(n, k) has {len(str(math.comb(n, k)))} digits")
        for bounds in ("paper", "simultaneous"):
            (_, levels), cold, warm = timed(
                lambda b=bounds, n=n, k=k: flcert_p(counts, n=n, k=k, alpha=ALPHA, bounds=b)
            )
            certified = (levels >= 0).mean()
            print(
                f"flcert_p {bounds:<13}       cold {cold:.4f} s  warm {warm:.4f} s  "
                f"certified {certified:.1%}  max level {levels.max()}"
            )
            _, p_y_lower, p_z_upper = flcert_p_bounds(counts, alpha=ALPHA, bounds=bounds)
            subset = slice(0, NAIVE_SUBSET)
            start = time.perf_counter()
            naive = naive_levels(p_y_lower[subset], p_z_upper[subset], n, k)
            naive_time = (time.perf_counter() - start) * NUM_INPUTS / NAIVE_SUBSET
            assert naive == levels[subset].tolist(), "naive and fast levels differ"
            print(
                f"  naive linear search ({NAIVE_SUBSET} inputs, extrapolated to {NUM_INPUTS}): "
                f"{naive_time:.2f} s  ratio naive / fast (cold) {naive_time / cold:.0f}x"
            )


if __name__ == "__main__":
    main()
