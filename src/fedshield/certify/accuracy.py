r"""Certified accuracy of a certified ensemble.

.. math::

    \mathrm{CA}@m = \frac{1}{|D|} \sum_{j \in D} [\hat y_j = y_j] \, [m^*_j \ge m]

(the certified accuracy of Cao et al., IEEE TIFS 2022): the share of test inputs whose
prediction is correct and provably stays so under any attack by at most :math:`m`
malicious clients. It is non-increasing in :math:`m`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from fedshield.certify.errors import CertificationInputError

__all__ = ["certified_accuracy"]


def _as_1d_int(values: ArrayLike, *, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1:
        raise CertificationInputError(f"{name} must be a 1-D integer array; got dtype {arr.dtype}, shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def certified_accuracy(labels: ArrayLike, predictions: ArrayLike, levels: ArrayLike, ms: ArrayLike) -> np.ndarray:
    r"""Certified accuracy :math:`\mathrm{CA}@m` for each :math:`m` in ``ms``.

    .. math:: \mathrm{CA}@m = \frac{1}{|D|} \sum_j [\hat y_j = y_j] \, [m^*_j \ge m]

    Parameters
    ----------
    labels : array_like of int
        ``(num_inputs,)`` true labels, ``>= 0``.
    predictions : array_like of int
        ``(num_inputs,)`` predicted labels; ``-1`` (abstain) is never correct.
    levels : array_like of int
        ``(num_inputs,)`` certified security levels, ``-1`` for an abstention.
    ms : int or array_like of int
        Numbers of malicious clients, each ``>= 0``.

    Returns
    -------
    numpy.ndarray
        ``(len(ms),)`` float shares in ``[0, 1]`` (shape ``(1,)`` for a scalar ``ms``).

    Raises
    ------
    CertificationInputError
        If the three arrays are not 1-D integer arrays of one non-zero length, a label is
        negative, or an ``m`` is negative.
    """
    labels = _as_1d_int(labels, name="labels")
    predictions = _as_1d_int(predictions, name="predictions")
    levels = _as_1d_int(levels, name="levels")
    ms = _as_1d_int(np.atleast_1d(ms), name="ms")
    if not labels.size or not labels.shape == predictions.shape == levels.shape:
        raise CertificationInputError(
            "labels, predictions and levels must have one shape (num_inputs >= 1,); got "
            f"{labels.shape}, {predictions.shape}, {levels.shape}"
        )
    if labels.min() < 0:
        raise CertificationInputError(f"labels must be >= 0; got labels min={labels.min()}")
    if ms.size and ms.min() < 0:
        raise CertificationInputError(f"ms must be >= 0; got ms min={ms.min()}")
    correct = predictions == labels
    return np.array([np.mean(correct & (levels >= m)) for m in ms.tolist()], dtype=float)
