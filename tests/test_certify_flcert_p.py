"""FLCert-P: eq. (6) in exact integers, the paper's and the simultaneous bounds, exact mode."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from fedshield.certify import (
    CertificationInputError,
    TopVotes,
    certified_level,
    clopper_pearson_lower,
    clopper_pearson_upper,
    flcert_d,
    flcert_p,
    flcert_p_bounds,
    flcert_p_exact,
)


def slow_level(p_y_lower: float, p_z_upper: float, n: int, k: int, *, full_scan: bool = True):
    """Eq. (6) by linear search over m with exact rationals (no monotonicity assumed)."""
    if not p_y_lower > p_z_upper:
        return -1
    total = math.comb(n, k)
    gap = math.ceil(Fraction(p_y_lower) * total) - math.floor(Fraction(p_z_upper) * total)
    level = -1
    for m in range(n - k + 1):
        if gap > 2 * (total - math.comb(n - m, k)):
            level = m
        elif not full_scan:
            break
    return level


def random_votes(rng, num_inputs, num_votes, top_share, num_labels):
    """Votes drawn from label probabilities with a top label of the given share."""
    rest = rng.dirichlet(np.ones(num_labels - 1), num_inputs) * (1 - top_share)[:, None]
    probs = np.concatenate([top_share[:, None], rest], axis=1)
    return np.stack([rng.multinomial(num_votes, p) for p in probs])


# ---------------------------------------------------------------- eq. (6) itself


@pytest.mark.parametrize(("n", "k"), [(1, 1), (5, 1), (10, 3), (30, 7), (60, 60), (100, 2)])
def test_certified_level_matches_linear_search(n, k):
    rng = np.random.default_rng(n * 1000 + k)
    lowers = np.concatenate([rng.uniform(0.3, 1.0, 300), [0.5, 1.0, 0.75, 0.51, 1 - 1e-12]])
    for p_y_lower in lowers.tolist():
        for p_z_upper in (1.0 - p_y_lower, float(rng.uniform(0, p_y_lower)), 0.0):
            expected = slow_level(p_y_lower, p_z_upper, n, k)
            got = certified_level(p_y_lower=p_y_lower, p_z_upper=p_z_upper, n=n, k=k)
            assert got == expected, (p_y_lower, p_z_upper)
            assert -1 <= got <= n - k


@pytest.mark.parametrize(("n", "k"), [(1000, 2), (2000, 500)])
def test_large_n_exact_integers(n, k):
    total = math.comb(n, k)
    if k == 500:
        assert total > 10**300  # no float could hold C(n, k)
    for p_y_lower in (0.6, 0.9, 0.99, 0.999999):
        expected = slow_level(p_y_lower, 1 - p_y_lower, n, k, full_scan=(n < 2000))
        assert certified_level(p_y_lower=p_y_lower, p_z_upper=1 - p_y_lower, n=n, k=k) == expected
    # The whole pipeline runs and the level grows with the top label's votes.
    counts = np.array([[v, 500 - v] for v in range(250, 501, 10)])
    _, levels = flcert_p(counts, n=n, k=k, alpha=0.001)
    assert np.all(np.diff(levels) >= 0)
    assert levels[-1] > levels[0]


def test_level_is_where_the_inequality_turns():
    # n = 1000, k = 10, p_y_lower = 0.9, p_z_upper = 0.1: the level m satisfies eq. (6)
    # and m + 1 does not: 0.8 > 2 (1 - C(n-m, k) / C(n, k)).
    n, k = 1000, 10
    level = certified_level(p_y_lower=0.9, p_z_upper=0.1, n=n, k=k)
    share = lambda m: 1 - Fraction(math.comb(n - m, k), math.comb(n, k))  # noqa: E731
    assert Fraction(8, 10) > 2 * share(level)
    assert not Fraction(8, 10) > 2 * share(level + 1)


# ---------------------------------------------------------------- the bounds


@pytest.mark.parametrize("bounds", ["paper", "simultaneous"])
def test_vectorised_levels_equal_scalar_eq6(bounds):
    rng = np.random.default_rng(7)
    counts = random_votes(rng, 400, 200, rng.uniform(0.3, 1.0, 400), 5)
    predictions, levels = flcert_p(counts, n=300, k=4, alpha=0.01, bounds=bounds)
    raw, p_y_lower, p_z_upper = flcert_p_bounds(counts, alpha=0.01, bounds=bounds)
    expected = [
        slow_level(lo, up, 300, 4, full_scan=False)
        for lo, up in zip(p_y_lower.tolist(), p_z_upper.tolist(), strict=True)
    ]
    assert levels.tolist() == expected
    assert np.array_equal(predictions, np.where(levels >= 0, raw, -1))
    assert np.array_equal(raw, counts.argmax(axis=1))  # no ties in these votes
    assert (levels >= 0).any() and (levels == -1).any()


def test_paper_bounds_are_algorithm_1():
    counts = np.array([[40, 10], [25, 25], [50, 0], [1, 49]])
    _, p_y_lower, p_z_upper = flcert_p_bounds(counts, alpha=0.01)
    # |D| = 4 inputs: lower bound of N_y at alpha / 4, upper = 1 - lower.
    expected = clopper_pearson_lower(np.array([40, 25, 50, 49]), 50, alpha=0.01 / 4)
    np.testing.assert_array_equal(p_y_lower, expected)
    np.testing.assert_array_equal(p_z_upper, 1 - expected)


def test_simultaneous_bounds_use_the_union_level():
    counts = np.array([[40, 6, 4], [20, 20, 10], [50, 0, 0]])
    a = 0.01 / (2 * 3 * 3)  # alpha / (2 |D| L)
    _, p_y_lower, p_z_upper = flcert_p_bounds(counts, alpha=0.01, bounds="simultaneous")
    lower = clopper_pearson_lower(np.array([40, 20, 50]), 50, alpha=a)
    upper = clopper_pearson_upper(np.array([6, 20, 0]), 50, alpha=a)
    np.testing.assert_array_equal(p_y_lower, lower)
    np.testing.assert_array_equal(p_z_upper, np.minimum(1 - lower, upper))


def test_edge_cases_unanimous_and_two_labels():
    # N_y = N: Beta(N, 1) quantile is a^(1/N); N_z = 0: upper bound is 1 - a^(1/N).
    n_votes, alpha, n, k = 100, 0.05, 50, 5
    counts = np.array([[n_votes, 0], [0, n_votes]])
    predictions, levels = flcert_p(counts, n=n, k=k, alpha=alpha)
    lower = (alpha / 2) ** (1 / n_votes)
    assert predictions.tolist() == [0, 1]
    expected = certified_level(p_y_lower=lower, p_z_upper=1 - lower, n=n, k=k)
    assert levels.tolist() == [expected, expected] and expected > 0
    predictions, levels = flcert_p(counts, n=n, k=k, alpha=alpha, bounds="simultaneous")
    a = alpha / (2 * 2 * 2)
    lower = a ** (1 / n_votes)
    expected = certified_level(p_y_lower=lower, p_z_upper=1 - lower, n=n, k=k)
    assert levels.tolist() == [expected, expected]
    # A 50/50 split always abstains; k = n leaves one group, so the level is at most 0.
    predictions, levels = flcert_p(np.array([[50, 50]]), n=n, k=k, alpha=alpha)
    assert (predictions.tolist(), levels.tolist()) == ([-1], [-1])
    _, levels = flcert_p(counts, n=7, k=7, alpha=alpha)
    assert levels.tolist() == [0, 0]


def test_ties_are_broken_by_the_seeded_generator():
    counts = np.tile([[30, 30, 5]], (200, 1))
    first, _, _ = flcert_p_bounds(counts, alpha=0.1, tie_seed=3)
    again, _, _ = flcert_p_bounds(counts, alpha=0.1, tie_seed=3)
    other, _, _ = flcert_p_bounds(counts, alpha=0.1, tie_seed=4)
    default, _, _ = flcert_p_bounds(counts, alpha=0.1)
    zero, _, _ = flcert_p_bounds(counts, alpha=0.1, tie_seed=0)
    assert np.array_equal(first, again) and np.array_equal(default, zero)
    assert set(first.tolist()) == {0, 1}  # both tied labels occur, never label 2
    assert not np.array_equal(first, other)


# ---------------------------------------------------------------- statistics


def bound_failures(counts, probs, *, alpha, bounds):
    """Per run, whether some input's p_y_lower or p_z_upper is wrong for the true probs."""
    runs, num_inputs, _ = counts.shape
    failed = np.zeros(runs, dtype=bool)
    rows = np.arange(num_inputs)
    for run in range(runs):
        y, lower, upper = flcert_p_bounds(counts[run], alpha=alpha, bounds=bounds)
        p = probs[run]
        others = p.copy()
        others[rows, y] = -np.inf
        failed[run] = np.any((lower > p[rows, y]) | (upper < others.max(axis=1)))
    return failed.mean()


def test_simultaneous_bounds_hold_with_probability_one_minus_alpha():
    rng = np.random.default_rng(2024)
    runs, num_inputs, num_votes, alpha = 300, 20, 200, 0.1
    # Mixed inputs: near-ties between the top two labels, clear winners, flat votes.
    base = np.array([[0.45, 0.45, 0.05, 0.05], [0.8, 0.1, 0.05, 0.05], [0.25, 0.25, 0.25, 0.25]])
    probs = np.broadcast_to(base[np.arange(num_inputs) % 3], (runs, num_inputs, 4))
    counts = rng.multinomial(num_votes, probs)
    share = bound_failures(counts, probs, alpha=alpha, bounds="simultaneous")
    assert share <= alpha, f"simultaneous bounds failed in {share:.3f} of runs (alpha={alpha})"


def test_paper_bounds_exceed_alpha_when_two_labels_tie_in_probability():
    # p = (1/2, 1/2): the argmax is the over-counted label, so the fixed-label bound at
    # alpha / |D| fails about twice as often; over |D| = 10 inputs that exceeds alpha.
    rng = np.random.default_rng(11)
    runs, num_inputs, num_votes, alpha = 400, 10, 100, 0.2
    probs = np.full((runs, num_inputs, 2), 0.5)
    counts = rng.multinomial(num_votes, probs)
    paper = bound_failures(counts, probs, alpha=alpha, bounds="paper")
    simultaneous = bound_failures(counts, probs, alpha=alpha, bounds="simultaneous")
    print(f"failure share: paper {paper:.3f}, simultaneous {simultaneous:.3f}, alpha {alpha}")
    assert paper > alpha, f"paper bounds failed in {paper:.3f} of runs"
    assert simultaneous <= alpha, f"simultaneous bounds failed in {simultaneous:.3f} of runs"


@pytest.mark.parametrize("num_labels", [2, 10])
def test_simultaneous_close_to_paper_on_large_majorities(num_labels):
    rng = np.random.default_rng(num_labels)
    counts = random_votes(rng, 2000, 500, rng.uniform(0.7, 0.95, 2000), num_labels)
    _, paper = flcert_p(counts, n=1000, k=10, alpha=0.001)
    _, simultaneous = flcert_p(counts, n=1000, k=10, alpha=0.001, bounds="simultaneous")
    loss = paper - simultaneous
    print(
        f"L={num_labels}: paper - simultaneous in [{loss.min()}, {loss.max()}], "
        f"mean {loss.mean():.2f}, paper max level {paper.max()}"
    )
    assert (paper >= 0).all() and (simultaneous >= 0).all()
    assert loss.max() <= 2, f"simultaneous lost up to {loss.max()} clients against paper"


def test_simultaneous_certifies_spread_votes_the_paper_abstains_on():
    rng = np.random.default_rng(5)
    counts = rng.multinomial(1000, [0.4, 0.2, 0.2, 0.2], size=300)
    _, paper = flcert_p(counts, n=1000, k=10, alpha=0.001)
    predictions, simultaneous = flcert_p(counts, n=1000, k=10, alpha=0.001, bounds="simultaneous")
    assert (paper == -1).all()  # 1 - p_y_lower >= 1/2 > p_y_lower: Algorithm 1 abstains
    certified = simultaneous >= 0
    assert certified.mean() > 0.5, certified.mean()
    assert (predictions[certified] == 0).all()


# ---------------------------------------------------------------- exact mode


def attack_flips(group_labels, groups, malicious, y, num_labels):
    """Worst case for one malicious set: every touched group votes for one label z."""
    touched = np.array([not malicious.isdisjoint(g) for g in groups])
    kept = np.bincount(group_labels[~touched], minlength=num_labels)
    for z in range(num_labels):
        if z != y:
            attacked = kept.copy()
            attacked[z] += touched.sum()
            if int(np.argmax(attacked)) != y:
                return True
    return False


@pytest.mark.parametrize(("n", "k"), [(4, 1), (5, 2), (6, 2), (6, 3), (7, 2), (4, 4)])
def test_exact_mode_against_brute_force(n, k):
    rng = np.random.default_rng(n * 10 + k)
    groups = [frozenset(g) for g in itertools.combinations(range(n), k)]
    num_labels = 3
    positive = 0
    for top_share in np.linspace(0.4, 1.0, 12):
        rest = (1 - top_share) / 2
        group_labels = rng.choice(num_labels, size=len(groups), p=[rest, top_share, rest])
        counts = np.bincount(group_labels, minlength=num_labels)
        predictions, levels = flcert_p_exact(counts[None, :], n=n, k=k)
        y, level = int(predictions[0]), int(levels[0])
        assert y == int(np.argmax(counts)) and 0 <= level <= n - k
        positive += level > 0
        # Sound: no set of up to `level` malicious clients flips the prediction.
        for m in range(level + 1):
            for malicious in itertools.combinations(range(n), m):
                assert not attack_flips(group_labels, groups, set(malicious), y, num_labels)
        # Tight: for the same votes, groups can be assigned so that level + 1 clients win.
        malicious = set(range(level + 1))
        touched_first = sorted(range(len(groups)), key=lambda g: malicious.isdisjoint(groups[g]))
        flipped = False
        for z in range(num_labels):
            if z == y:
                continue
            others = [i for i in range(num_labels) if i not in (y, z)]
            ordered = np.repeat([y, *others, z], [counts[i] for i in (y, *others, z)])
            assignment = np.empty(len(groups), dtype=int)
            assignment[touched_first] = ordered
            flipped |= attack_flips(assignment, groups, malicious, y, num_labels)
        assert flipped, (counts, level)
    if k <= 2:
        assert positive > 0  # the cases exercise levels above 0


def test_exact_mode_with_single_client_groups_is_flcert_d():
    # k = 1: the n groups are the clients themselves, disjoint, so eq. 12 applies.
    rng = np.random.default_rng(3)
    counts = rng.multinomial(15, [0.6, 0.25, 0.15], size=200)
    assert all(np.array_equal(a, b) for a, b in zip(flcert_p_exact(counts, n=15, k=1), flcert_d(counts), strict=True))


def test_exact_mode_is_the_strict_paper_inequality_up_to_the_tie():
    # The paper's strict inequality on p = N / C reads N_y - max N_i > T(m) in integers;
    # exact mode also certifies the boundary case N_y - N_i = T(m) where y wins the tie,
    # so its level is between the strict one and the strict one with the gap plus one.
    rng = np.random.default_rng(9)
    n, k = 12, 3
    total = math.comb(n, k)
    thresholds = [2 * (total - math.comb(n - m, k)) for m in range(n - k + 1)]
    counts = rng.multinomial(total, [0.2, 0.7, 0.1], size=300)
    # By hand, C(12, 3) = 220 and T(1) = 2 (220 - C(11, 3)) = 2 (220 - 165) = 110:
    # [165, 55, 0]: y = 0, gap 110 >= T(1) (the tie goes to y) -> 1; strict 110 > 110 fails.
    # [55, 165, 0]: y = 1, label 0 < y wins a tie, 165 - 56 = 109 < 110 -> 0.
    counts = np.vstack([[[165, 55, 0], [55, 165, 0]], counts])
    _, levels = flcert_p_exact(counts, n=n, k=k)
    assert levels[:2].tolist() == [1, 0]
    strict_levels, relaxed_levels = [], []
    for row in counts:
        ordered = np.sort(row)
        gap = int(ordered[-1] - ordered[-2])
        strict_levels.append(max(m for m, t in enumerate(thresholds) if gap > t or m == 0))
        relaxed_levels.append(max(m for m, t in enumerate(thresholds) if gap + 1 > t or m == 0))
    assert np.all(np.array(strict_levels) <= levels)
    assert np.all(levels <= np.array(relaxed_levels))
    assert np.any(np.array(strict_levels) < levels)  # the tie rule matters on some rows


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0, "k": 1}, r"n must be an integer >= 1"),
        ({"n": 10, "k": 0}, r"k must be in \[1, n\]"),
        ({"n": 10, "k": 11}, r"k must be in \[1, n\] = \[1, 10\].*got k=11"),
        ({"n": 10, "k": 2.0}, r"k must be in \[1, n\]"),
        ({"alpha": 0.0}, r"alpha must be in \(0, 1\); got alpha=0.0"),
        ({"alpha": 1.0}, r"alpha must be in \(0, 1\)"),
        ({"bounds": "bonferroni"}, r"bounds must be one of \('paper', 'simultaneous'\)"),
        ({"tie_seed": -1}, r"tie_seed must be None or an integer >= 0"),
        ({"num_labels": 3}, r"num_labels=3 differs from counts.shape\[1\]=2"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    arguments = {"n": 10, "k": 2, "alpha": 0.01, **kwargs}
    with pytest.raises(CertificationInputError, match=match):
        flcert_p(np.array([[8, 2], [5, 5]]), **arguments)


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        (np.array([[8, 2], [5, 4]]), r"same number N >= 1 of votes"),
        (np.array([[0, 0], [0, 0]]), r"same number N >= 1 of votes"),
        (np.array([[8, -2]]), r"counts must be non-negative"),
        (np.array([[8.0, 2.0]]), r"counts must be an integer array"),
        (np.array([[8], [2]]), r"counts must have >= 2 labels"),
    ],
)
def test_bad_counts_raise(counts, match):
    with pytest.raises(CertificationInputError, match=match):
        flcert_p(counts, n=10, k=2, alpha=0.01)


def test_exact_mode_and_level_validation():
    with pytest.raises(CertificationInputError, match=r"C\(n, k\) = C\(5, 2\) = 10"):
        flcert_p_exact(np.array([[6, 3]]), n=5, k=2)
    with pytest.raises(CertificationInputError, match=r"k must be in \[1, n\]"):
        flcert_p_exact(np.array([[6, 4]]), n=5, k=6)
    with pytest.raises(CertificationInputError, match=r"p_y_lower must be in \[0, 1\]"):
        certified_level(p_y_lower=1.5, p_z_upper=0.1, n=5, k=2)
    with pytest.raises(CertificationInputError, match=r"p_z_upper must be in \[0, 1\]"):
        certified_level(p_y_lower=0.5, p_z_upper=-0.1, n=5, k=2)


def test_simultaneous_with_sparse_votes_needs_num_labels():
    votes = TopVotes.from_dense(np.array([[8, 2, 0]]), 2)
    unlabeled = TopVotes(votes.labels, votes.counts, votes.total)
    with pytest.raises(CertificationInputError, match="num_labels is required"):
        flcert_p(unlabeled, n=10, k=2, alpha=0.01, bounds="simultaneous")
    with pytest.raises(CertificationInputError, match="num_labels=4 differs"):
        flcert_p(votes, n=10, k=2, alpha=0.01, bounds="simultaneous", num_labels=4)
    # Given explicitly, it runs.
    flcert_p(unlabeled, n=10, k=2, alpha=0.01, bounds="simultaneous", num_labels=3)
