r"""FLCert-P: certified majority vote over randomly sampled client groups.

FLCert-P [Cao et al., "FLCert: Provably Secure Federated Learning against Poisoning
Attacks", IEEE TIFS 2022; first in Cao, Jia and Gong, AAAI 2021] draws :math:`N` groups of
:math:`k` clients, each uniformly from the :math:`\binom{n}{k}` subsets of the :math:`n`
clients, trains one global model per group, and predicts the label :math:`y` with the
largest label probability :math:`p_i` (the share of the :math:`\binom{n}{k}` subsets whose
model predicts :math:`i`), estimated by the votes :math:`N_i \sim \mathrm{Bin}(N, p_i)`.

Certificate (the paper's eq. (6))
---------------------------------
Write :math:`C = \binom{n}{k}`. Every :math:`p_i` is a multiple of :math:`1/C`, so bounds
:math:`\underline{p_y} \le p_y` and :math:`\overline{p_z} \ge \max_{i \ne y} p_i` tighten to
:math:`\underline{p_y}' = \lceil \underline{p_y} C \rceil / C` and
:math:`\overline{p_z}' = \lfloor \overline{p_z} C \rfloor / C`. With :math:`m` malicious
clients the groups containing one of them are a share
:math:`\delta_m = 1 - \binom{n-m}{k} / \binom{n}{k}` of all subsets, and only their models
can change, so :math:`p'_y \ge p_y - \delta_m` and :math:`p'_i \le p_i + \delta_m`. The
prediction is provably unchanged if

.. math::

    \underline{p_y}' - \delta_m > \overline{p_z}' + \delta_m ,

i.e. in exact integers (no float ever touches :math:`C`, which may exceed
:math:`10^{300}`)

.. math::

    \lceil \underline{p_y} C \rceil - \lfloor \overline{p_z} C \rfloor
    > T(m) = 2 \left( \binom{n}{k} - \binom{n-m}{k} \right) .

The certified security level is the largest :math:`m \in [0, n - k]` satisfying it
(:math:`T` increases with :math:`m`, so it is found by binary search over the lazily
computed, memoised :math:`T(m)`); an input whose bounds give
:math:`\underline{p_y} \le \overline{p_z}` abstains (prediction and level ``-1``).

Bounds
------
``bounds="paper"`` is the paper's Algorithm 1: :math:`y = \arg\max_i N_i` (ties broken at
random), :math:`\underline{p_y}` the Clopper-Pearson lower bound of :math:`N_y` at level
:math:`\alpha / |D|` (Bonferroni over the :math:`|D|` test inputs) and
:math:`\overline{p_z} = 1 - \underline{p_y}`.

``bounds="simultaneous"`` computes, for every label :math:`i` of every input, the
Clopper-Pearson lower and upper bounds of :math:`p_i` at level
:math:`\alpha / (2 |D| L)`, and uses :math:`\underline{p_y}` = the lower bound of the
argmax label and :math:`\overline{p_z} = \min(1 - \underline{p_y}, \max_{i \ne y}
\overline{p_i})`.

Why the paper's mode is not a :math:`1 - \alpha` statement, and the fix (proof sketch).
A Clopper-Pearson bound for a label :math:`i` fixed in advance fails,
:math:`p_i < \underline{p}(N_i)`, with probability at most :math:`a`. Algorithm 1 applies
it to :math:`y`, a label chosen from the same votes as the one with the most votes, i.e.
the one most likely to be over-counted. The event :math:`\{p_y < \underline{p}(N_y)\}` is
contained in :math:`\bigcup_i \{p_i < \underline{p}(N_i)\}`, whose probability is bounded
only by :math:`L a`, not :math:`a`: with two labels at :math:`p = (1/2, 1/2)` the argmax
is certified wrongly about twice as often as the nominal level (see the tests). The
simultaneous mode takes the union bound over all :math:`2 |D| L` one-sided bounds, each
failing with probability at most :math:`\alpha / (2 |D| L)`, so with probability at least
:math:`1 - \alpha` every bound of every input holds at once. On that event the bounds hold
for whichever label the data select, :math:`p_z \le \max_{i \ne y} \overline{p_i}`, and
:math:`p_z \le 1 - p_y \le 1 - \underline{p_y}` because the :math:`p_i` sum to one; hence
all the certificates of the :math:`|D|` inputs hold simultaneously with probability at
least :math:`1 - \alpha`. Against the paper's mode on votes with a clear majority it loses
at most about one client with two labels (its lower bound is taken at a level :math:`2L`
times smaller) and gains when the other votes are spread over many labels
(:math:`\max_{i \ne y} \overline{p_i}` is then far below :math:`1 - \underline{p_y}`). It
also certifies inputs whose top label has no majority (e.g. 40% against 20%), where
:math:`1 - \underline{p_y} \ge 1/2` makes the paper's mode abstain.

Exact mode
----------
:func:`flcert_p_exact` is exhaustive FLCert-P: all :math:`C` groups are trained, so
:math:`p_i = N_i / C` exactly and the prediction is deterministic (ties to the smallest
label). With :math:`m` malicious clients, :math:`C - \binom{n-m}{k}` groups contain one of
them; in the worst case each of those switches its vote from :math:`y` to the best
competitor :math:`i`, so :math:`y` keeps winning against :math:`i` iff
:math:`N_y - N_i - [i < y] \ge T(m)`; the level is the largest such :math:`m`. This is
the paper's inequality with ``>`` relaxed to ``>=`` exactly where the tie rule lets
:math:`y` win a tie (the same :math:`[i < y]` as FLCert-D's eq. 12), and
it is tight: some assignment of the same votes to the groups loses at :math:`m + 1`.
"""

from __future__ import annotations

import bisect
import functools
import math
import numbers

import numpy as np
from numpy.typing import ArrayLike

from fedshield.certify.clopper_pearson import (
    check_alpha,
    clopper_pearson_lower,
    clopper_pearson_upper,
)
from fedshield.certify.errors import CertificationInputError
from fedshield.certify.sparse import (
    TopVotes,
    VoteSummary,
    check_dense_counts,
    check_num_labels,
    summarize_votes,
)

__all__ = ["certified_level", "flcert_p", "flcert_p_bounds", "flcert_p_exact"]

BOUNDS = ("paper", "simultaneous")


def _check_n_k(n: object, k: object) -> tuple[int, int]:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or int(n) < 1:
        raise CertificationInputError(f"n must be an integer >= 1 (n is the number of clients); got n={n!r}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= int(k) <= int(n):
        raise CertificationInputError(f"k must be in [1, n] = [1, {n}] (k is the group size); got k={k!r}")
    return int(n), int(k)


class _Thresholds:
    r"""Lazy, memoised sequence :math:`T(m) = 2(\binom{n}{k} - \binom{n-m}{k})`, m in [0, n-k].

    Strictly increasing, so :mod:`bisect` searches it with :math:`O(\log(n - k))` binomial
    coefficients per search; the memo shares the top of the search tree between inputs.
    """

    def __init__(self, n: int, k: int) -> None:
        self.n, self.k = n, k
        self.total = math.comb(n, k)
        self._memo: dict[int, int] = {}

    def __len__(self) -> int:
        return self.n - self.k + 1

    def __getitem__(self, m: int) -> int:
        value = self._memo.get(m)
        if value is None:
            if not 0 <= m <= self.n - self.k:
                raise IndexError(m)
            value = 2 * (self.total - math.comb(self.n - m, self.k))
            self._memo[m] = value
        return value


@functools.lru_cache(maxsize=32)
def _thresholds(n: int, k: int) -> _Thresholds:
    return _Thresholds(n, k)


def _ceil_times(p: float, total: int) -> int:
    """Exact ``ceil(p * total)``: a float is a dyadic rational, so no rounding happens."""
    num, den = float(p).as_integer_ratio()
    return -((-num * total) // den)


def _floor_times(p: float, total: int) -> int:
    """Exact ``floor(p * total)``."""
    num, den = float(p).as_integer_ratio()
    return (num * total) // den


def _short(value: int) -> str:
    """An integer for a message: in full up to 30 digits, else its leading digits."""
    digits = str(value)
    return digits if len(digits) <= 30 else f"{digits[0]}.{digits[1:6]}e{len(digits) - 1}"


def _level_from_gap(gap: int, n: int, k: int) -> int:
    """Largest m in [0, n - k] with ``gap > T(m)``; -1 if none (``gap <= 0``)."""
    return bisect.bisect_left(_thresholds(n, k), gap) - 1


def certified_level(*, p_y_lower: float, p_z_upper: float, n: int, k: int) -> int:
    r"""FLCert-P certified security level from probability bounds (paper eq. 6).

    .. math::

        m^* = \max \left\{ m \in [0, n - k] :
        \lceil \underline{p_y} \tbinom{n}{k} \rceil - \lfloor \overline{p_z} \tbinom{n}{k} \rfloor
        > 2 \left( \tbinom{n}{k} - \tbinom{n-m}{k} \right) \right\}

    computed with exact integers.

    Parameters
    ----------
    p_y_lower : float
        Lower bound of the predicted label's probability, in ``[0, 1]``.
    p_z_upper : float
        Upper bound of every other label's probability, in ``[0, 1]``.
    n : int
        Number of clients, ``>= 1``.
    k : int
        Group size, in ``[1, n]``.

    Returns
    -------
    int
        The level :math:`m^* \ge 0`, or ``-1`` (abstain) when
        ``p_y_lower <= p_z_upper``.

    Raises
    ------
    CertificationInputError
        If ``n < 1``, ``k`` is outside ``[1, n]`` or a bound is outside ``[0, 1]``.
    """
    n, k = _check_n_k(n, k)
    for name, value in (("p_y_lower", p_y_lower), ("p_z_upper", p_z_upper)):
        if not isinstance(value, numbers.Real) or not 0 <= value <= 1:
            raise CertificationInputError(f"{name} must be in [0, 1]; got {name}={value!r}")
    if not p_y_lower > p_z_upper:
        return -1
    total = math.comb(n, k)
    gap = _ceil_times(p_y_lower, total) - _floor_times(p_z_upper, total)
    return _level_from_gap(gap, n, k)


def _check_votes(counts: ArrayLike | TopVotes, num_labels: object) -> tuple[np.ndarray | TopVotes, int | None]:
    """Validate the votes and return them with the number of labels (when known)."""
    num_labels = check_num_labels(num_labels, minimum=2)
    if isinstance(counts, TopVotes):
        if num_labels is not None and counts.num_labels is not None and num_labels != counts.num_labels:
            raise CertificationInputError(
                f"num_labels={num_labels} differs from the votes' num_labels={counts.num_labels}"
            )
        known = num_labels if num_labels is not None else counts.num_labels
        if known is not None and known < 2:
            raise CertificationInputError(f"num_labels must be >= 2 for a certificate; got num_labels={known}")
        if num_labels is not None and counts.labels.max() >= num_labels:
            raise CertificationInputError(f"labels must be < num_labels={num_labels}; got {counts.labels.max()}")
        return counts, known
    dense = check_dense_counts(counts)
    if dense.shape[1] < 2:
        raise CertificationInputError(f"counts must have >= 2 labels (columns) for a certificate; got {dense.shape[1]}")
    if num_labels is not None and num_labels != dense.shape[1]:
        raise CertificationInputError(f"num_labels={num_labels} differs from counts.shape[1]={dense.shape[1]}")
    return dense, dense.shape[1]


def _num_votes(summary: VoteSummary) -> int:
    total = summary.total
    if total.min() != total.max() or total[0] < 1:
        raise CertificationInputError(
            "every input needs the same number N >= 1 of votes (one per sampled group); got "
            f"row totals in [{total.min()}, {total.max()}]"
        )
    return int(total[0])


def _bounds(
    counts: ArrayLike | TopVotes, *, alpha: float, bounds: str, tie_seed: int | None, num_labels: int | None
) -> tuple[VoteSummary, np.ndarray, np.ndarray]:
    """Summary, ``p_y_lower`` and ``u`` with ``p_z_upper = min(1 - p_y_lower, u)``."""
    alpha = check_alpha(alpha)
    if bounds not in BOUNDS:
        raise CertificationInputError(f"bounds must be one of {BOUNDS}; got bounds={bounds!r}")
    if tie_seed is not None and (
        isinstance(tie_seed, bool) or not isinstance(tie_seed, numbers.Integral) or tie_seed < 0
    ):
        raise CertificationInputError(f"tie_seed must be None or an integer >= 0; got tie_seed={tie_seed!r}")
    votes, known_labels = _check_votes(counts, num_labels)
    num_inputs = votes.num_inputs if isinstance(votes, TopVotes) else votes.shape[0]
    rng = np.random.default_rng(0 if tie_seed is None else int(tie_seed))
    summary = summarize_votes(votes, tie_draws=rng.random(num_inputs))
    num_votes = _num_votes(summary)
    if bounds == "paper":
        level = alpha / num_inputs
        p_y_lower = clopper_pearson_lower(summary.top, num_votes, alpha=level)
        other_upper: np.ndarray = np.ones(num_inputs)
    else:
        if known_labels is None:
            raise CertificationInputError(
                "num_labels is required for bounds='simultaneous' with TopVotes "
                "(the union bound runs over every label); got num_labels=None"
            )
        level = alpha / (2 * num_inputs * known_labels)
        p_y_lower = clopper_pearson_lower(summary.top, num_votes, alpha=level)
        other_upper = np.asarray(clopper_pearson_upper(summary.runner_up, num_votes, alpha=level))
    return summary, np.asarray(p_y_lower), other_upper


def flcert_p_bounds(
    counts: np.ndarray | TopVotes,
    *,
    alpha: float,
    bounds: str = "paper",
    tie_seed: int | None = None,
    num_labels: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Predicted labels and the probability bounds FLCert-P certifies with.

    ``bounds="paper"`` (Algorithm 1):

    .. math::

        \underline{p_y} = B\!\left(\tfrac{\alpha}{|D|};\, N_y,\, N - N_y + 1\right),
        \qquad \overline{p_z} = 1 - \underline{p_y} .

    ``bounds="simultaneous"``: with :math:`a = \alpha / (2 |D| L)`,

    .. math::

        \underline{p_y} = B(a;\, N_y,\, N - N_y + 1), \qquad
        \overline{p_z} = \min\!\left(1 - \underline{p_y},\,
        \max_{i \ne y} B(1 - a;\, N_i + 1,\, N - N_i)\right),

    valid for all inputs and labels at once with probability :math:`\ge 1 - \alpha` (see
    the module docstring).

    Parameters
    ----------
    counts : array_like of int or TopVotes
        ``(num_inputs, num_labels)`` votes of :math:`N` sampled groups (equal row sums), or
        the sparse top-``r`` form (an unseen label counts as the most it can hold).
    alpha : float
        Error level for all :math:`|D|` inputs together, in ``(0, 1)``.
    bounds : {"paper", "simultaneous"}
        Which bounds to compute.
    tie_seed : int, optional
        Seed of the :class:`numpy.random.Generator` that breaks ties between the most
        voted labels; ``None`` means 0, so the result is deterministic.
    num_labels : int, optional
        Size :math:`L \ge 2` of the label space; required for ``"simultaneous"`` with
        :class:`TopVotes` that do not carry it.

    Returns
    -------
    predictions : numpy.ndarray
        ``(num_inputs,)`` argmax labels :math:`y` (before any abstention).
    p_y_lower, p_z_upper : numpy.ndarray
        ``(num_inputs,)`` float bounds.

    Raises
    ------
    CertificationInputError
        On a bad ``alpha``, ``bounds``, ``tie_seed`` or ``num_labels``, votes that are not
        non-negative integers, fewer than 2 labels, or unequal row totals.
    """
    summary, p_y_lower, other_upper = _bounds(
        counts, alpha=alpha, bounds=bounds, tie_seed=tie_seed, num_labels=num_labels
    )
    return summary.predictions, p_y_lower, np.minimum(1.0 - p_y_lower, other_upper)


def flcert_p(
    counts: np.ndarray | TopVotes,
    *,
    n: int,
    k: int,
    alpha: float,
    bounds: str = "paper",
    tie_seed: int | None = None,
    num_labels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""FLCert-P predictions and certified security levels (Algorithm 1, eq. 6).

    .. math::

        m^* = \max \left\{ m \in [0, n-k] :
        \lceil \underline{p_y} C \rceil - \lfloor \overline{p_z} C \rfloor
        > 2 \left( C - \tbinom{n-m}{k} \right) \right\}, \quad C = \tbinom{n}{k}

    with the bounds of :func:`flcert_p_bounds`; an input abstains unless
    :math:`\underline{p_y} > \overline{p_z}`.

    Parameters
    ----------
    counts : array_like of int or TopVotes
        ``(num_inputs, num_labels)`` votes of the :math:`N` sampled groups; every row sums
        to :math:`N`.
    n : int
        Number of clients, ``>= 1``.
    k : int
        Group size, in ``[1, n]``.
    alpha : float
        The certificates of all inputs hold together with probability ``>= 1 - alpha``
        (``"simultaneous"``; see the module docstring for ``"paper"``), in ``(0, 1)``.
    bounds : {"paper", "simultaneous"}
        The paper's Algorithm 1 or the simultaneous union bound.
    tie_seed : int, optional
        Seed for breaking ties between the most-voted labels; ``None`` means 0.
    num_labels : int, optional
        Size of the label space; required for ``"simultaneous"`` with :class:`TopVotes`
        that do not carry it.

    Returns
    -------
    predictions : numpy.ndarray
        ``(num_inputs,)`` int64 labels, ``-1`` where the input abstains.
    levels : numpy.ndarray
        ``(num_inputs,)`` int64 levels in ``[0, n - k]``, ``-1`` where it abstains.

    Raises
    ------
    CertificationInputError
        If ``n < 1``, ``k`` is outside ``[1, n]``, or on any error of
        :func:`flcert_p_bounds`.
    """
    n, k = _check_n_k(n, k)
    summary, p_y_lower, other_upper = _bounds(
        counts, alpha=alpha, bounds=bounds, tie_seed=tie_seed, num_labels=num_labels
    )
    # p_y_lower > min(1 - p_y_lower, u)  <=>  2 p_y_lower > 1  or  p_y_lower > u (exact in floats).
    certified = (2.0 * p_y_lower > 1.0) | (p_y_lower > other_upper)
    levels = np.full(p_y_lower.shape, -1, dtype=np.int64)
    if certified.any():
        pairs = np.stack([p_y_lower[certified], other_upper[certified]], axis=1)
        unique_pairs, inverse = np.unique(pairs, axis=0, return_inverse=True)
        total = math.comb(n, k)
        unique_levels = np.empty(len(unique_pairs), dtype=np.int64)
        for index, (lower, upper) in enumerate(unique_pairs.tolist()):
            ceil_lower = _ceil_times(lower, total)
            # floor(min(1 - lower, upper) * C) = min(C - ceil(lower * C), floor(upper * C)).
            floor_upper = min(total - ceil_lower, _floor_times(upper, total))
            unique_levels[index] = _level_from_gap(ceil_lower - floor_upper, n, k)
        levels[certified] = unique_levels[inverse.reshape(-1)]
    predictions = np.where(levels >= 0, summary.predictions, -1)
    return predictions, levels


def flcert_p_exact(counts: np.ndarray | TopVotes, *, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Exhaustive FLCert-P: every one of the :math:`\binom{n}{k}` groups was trained.

    .. math::

        m^* = \max \left\{ m \in [0, n-k] :
        \min_{i \ne y} (N_y - N_i - [i < y]) \ge 2 \left( \tbinom{n}{k} - \tbinom{n-m}{k}
        \right) \right\}

    with :math:`y` the most-voted label (ties to the smallest). Deterministic, no
    confidence level: :math:`p_i = N_i / \binom{n}{k}` exactly.

    Parameters
    ----------
    counts : array_like of int or TopVotes
        ``(num_inputs, num_labels)`` votes; every row sums to :math:`\binom{n}{k}`.
    n : int
        Number of clients, ``>= 1``.
    k : int
        Group size, in ``[1, n]``.

    Returns
    -------
    predictions : numpy.ndarray
        ``(num_inputs,)`` int64 labels.
    levels : numpy.ndarray
        ``(num_inputs,)`` int64 levels in ``[0, n - k]``.

    Raises
    ------
    CertificationInputError
        If ``n < 1``, ``k`` is outside ``[1, n]``, the votes are not non-negative integers
        over >= 2 labels, or a row does not sum to :math:`\binom{n}{k}`.
    """
    n, k = _check_n_k(n, k)
    votes, _ = _check_votes(counts, None)
    summary = summarize_votes(votes)
    total = math.comb(n, k)
    if summary.total.min() != total or summary.total.max() != total:
        raise CertificationInputError(
            f"every row must sum to C(n, k) = C({n}, {k}) = {_short(total)} (all groups "
            "trained); got "
            f"row totals in [{summary.total.min()}, {summary.total.max()}]"
        )
    thresholds = _thresholds(n, k)
    gaps = summary.top - summary.runner_up_tie
    levels = np.empty(gaps.shape, dtype=np.int64)
    unique_gaps, inverse = np.unique(gaps, return_inverse=True)
    unique_levels = [bisect.bisect_right(thresholds, int(g)) - 1 for g in unique_gaps]
    levels[:] = np.asarray(unique_levels, dtype=np.int64)[inverse.reshape(-1)]
    return summary.predictions, levels
