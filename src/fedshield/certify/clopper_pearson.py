r"""Exact one-sided Clopper-Pearson bounds for a binomial proportion.

For :math:`K \sim \mathrm{Binomial}(N, p)` observed as :math:`K = k`, the one-sided
:math:`(1 - \alpha)` bounds are the Beta quantiles [Clopper and Pearson, 1934]

.. math::

    \underline{p} = B(\alpha;\, k,\, N - k + 1), \qquad
    \overline{p} = B(1 - \alpha;\, k + 1,\, N - k),

with :math:`\underline{p} = 0` at :math:`k = 0` and :math:`\overline{p} = 1` at
:math:`k = N`. Each bound alone covers :math:`p` with probability at least
:math:`1 - \alpha` for every :math:`p` (the coverage is exact in the sense of the
binomial distribution, not asymptotic). The two-sided interval at level :math:`2\alpha`
(``statsmodels.stats.proportion.proportion_confint(method="beta")``) has these ends.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import beta

from fedshield.certify.errors import CertificationInputError

__all__ = ["clopper_pearson_lower", "clopper_pearson_upper"]


def check_alpha(alpha: float, *, name: str = "alpha") -> float:
    """Return ``alpha`` as a float after checking ``0 < alpha < 1``."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
        raise CertificationInputError(f"{name} must be in (0, 1); got {name}={alpha!r}")
    return float(alpha)


def _check_binomial(successes: ArrayLike, trials: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(successes)
    n = np.asarray(trials)
    for name, arr in (("successes", k), ("trials", n)):
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
            raise CertificationInputError(f"{name} must be integers; got dtype {arr.dtype}")
        if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.mod(arr, 1) == 0):
            raise CertificationInputError(f"{name} must be integers; got {name}={arr!r}")
    k, n = np.broadcast_arrays(k.astype(np.int64), n.astype(np.int64))
    if np.any(n < 1):
        raise CertificationInputError(f"trials must be >= 1; got trials min={n.min()}")
    if np.any((k < 0) | (k > n)):
        bad = np.flatnonzero(((k < 0) | (k > n)).ravel())[0]
        raise CertificationInputError(
            f"successes must be in [0, trials]; got successes={k.ravel()[bad]} with trials={n.ravel()[bad]}"
        )
    return k, n


def _result(values: np.ndarray, successes: ArrayLike, trials: ArrayLike) -> float | np.ndarray:
    if np.ndim(successes) == 0 and np.ndim(trials) == 0:
        return float(values)
    return values


def clopper_pearson_lower(successes: ArrayLike, trials: ArrayLike, *, alpha: float) -> float | np.ndarray:
    r"""Exact one-sided :math:`(1 - \alpha)` lower bound of a binomial proportion.

    .. math::

        \underline{p} = B(\alpha;\, k,\, N - k + 1), \quad \underline{p} = 0 \text{ at } k = 0

    Coverage :math:`P(p \ge \underline{p}) \ge 1 - \alpha` holds for every :math:`p`.

    Parameters
    ----------
    successes : int or array_like of int
        Observed successes :math:`k`, in ``[0, trials]``.
    trials : int or array_like of int
        Number of trials :math:`N \ge 1`; broadcast against ``successes``.
    alpha : float
        One-sided error level, in ``(0, 1)``.

    Returns
    -------
    float or numpy.ndarray
        A float for scalar inputs, else an array of the broadcast shape.

    Raises
    ------
    CertificationInputError
        If ``alpha`` is outside ``(0, 1)``, ``trials < 1`` or ``successes`` is outside
        ``[0, trials]``.
    """
    alpha = check_alpha(alpha)
    k, n = _check_binomial(successes, trials)
    safe_k = np.maximum(k, 1)
    values = np.where(k == 0, 0.0, beta.ppf(alpha, safe_k, n - safe_k + 1))
    return _result(values, successes, trials)


def clopper_pearson_upper(successes: ArrayLike, trials: ArrayLike, *, alpha: float) -> float | np.ndarray:
    r"""Exact one-sided :math:`(1 - \alpha)` upper bound of a binomial proportion.

    .. math::

        \overline{p} = B(1 - \alpha;\, k + 1,\, N - k), \quad \overline{p} = 1 \text{ at } k = N

    Coverage :math:`P(p \le \overline{p}) \ge 1 - \alpha` holds for every :math:`p`.

    Parameters
    ----------
    successes : int or array_like of int
        Observed successes :math:`k`, in ``[0, trials]``.
    trials : int or array_like of int
        Number of trials :math:`N \ge 1`; broadcast against ``successes``.
    alpha : float
        One-sided error level, in ``(0, 1)``.

    Returns
    -------
    float or numpy.ndarray
        A float for scalar inputs, else an array of the broadcast shape.

    Raises
    ------
    CertificationInputError
        If ``alpha`` is outside ``(0, 1)``, ``trials < 1`` or ``successes`` is outside
        ``[0, trials]``.
    """
    alpha = check_alpha(alpha)
    k, n = _check_binomial(successes, trials)
    safe_k = np.minimum(k, n - 1)
    values = np.where(k == n, 1.0, beta.ppf(1 - alpha, safe_k + 1, n - safe_k))
    return _result(values, successes, trials)
