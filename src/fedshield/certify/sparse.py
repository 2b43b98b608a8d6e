r"""Votes matrices: the dense form, the sparse top-:math:`r` form, and their summary.

A votes matrix ``counts`` of shape ``(num_inputs, num_labels)`` holds, for test input
:math:`j` and label :math:`i`, the number :math:`N_{j,i}` of group models that predict
:math:`i` for :math:`j`. With a large label space (next-word prediction over a 10k+
vocabulary) that matrix is mostly zeros, so :class:`TopVotes` keeps, per input, only the
:math:`r` labels with the most votes, their counts and the total number of votes.

Invariant of :class:`TopVotes` (kept by :meth:`TopVotes.from_dense` and
:func:`top_votes_from_predictions`): the :math:`r` labels of a row are the first
:math:`r` labels in the order *count descending, then label ascending*. Hence a label that
is not listed (an *unseen* label) has a count :math:`\le c_r` (the :math:`r`-th listed
count) and :math:`\le N - \sum_{\text{listed}} c`, and an unseen label whose count equals
:math:`c_r` has a larger index than every listed label with count :math:`c_r`. The
certificates use only these bounds on unseen labels, so with :math:`r < L` they never
claim more than the dense votes would give (see :func:`summarize_votes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from fedshield.certify.errors import CertificationInputError

__all__ = ["TopVotes", "top_votes_from_predictions"]


def _check_int_array(values: ArrayLike, *, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise CertificationInputError(f"{name} must be an integer array; got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise CertificationInputError(f"{name} must be {ndim}-D; got {name} with shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def check_dense_counts(counts: ArrayLike) -> np.ndarray:
    """Return ``counts`` as an int64 ``(num_inputs, num_labels)`` array after validation."""
    arr = _check_int_array(counts, name="counts", ndim=2)
    if arr.shape[0] < 1:
        raise CertificationInputError(f"counts must hold >= 1 input; got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise CertificationInputError(f"counts must be non-negative; got counts min={arr.min()}")
    return arr


def check_num_labels(num_labels: object, *, minimum: int = 1) -> int | None:
    """Check ``num_labels`` is ``None`` or an integer ``>= minimum``."""
    if num_labels is None:
        return None
    if isinstance(num_labels, bool) or not isinstance(num_labels, int | np.integer):
        raise CertificationInputError(f"num_labels must be an integer; got {num_labels!r}")
    if num_labels < minimum:
        raise CertificationInputError(f"num_labels must be >= {minimum}; got num_labels={num_labels}")
    return int(num_labels)


def _check_r(r: object, *, upper: int | None = None) -> int:
    if isinstance(r, bool) or not isinstance(r, int | np.integer) or r < 1:
        raise CertificationInputError(f"r must be an integer >= 1; got r={r!r}")
    if upper is not None and r > upper:
        raise CertificationInputError(f"r must be in [1, {upper}] (num_labels); got r={r}")
    return int(r)


@dataclass(frozen=True)
class TopVotes:
    """Per input, the ``r`` labels with the most votes, their counts and the total.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(num_inputs, r)`` int64 labels, ordered by count descending then label
        ascending; ``-1`` pads a row with fewer than ``r`` labels that received a vote.
    counts : numpy.ndarray
        ``(num_inputs, r)`` int64 counts, non-increasing along each row; ``0`` under
        padding.
    total : numpy.ndarray
        ``(num_inputs,)`` int64 total number of votes of each input (the number of group
        models), at least the sum of the listed counts.
    num_labels : int or None
        Size :math:`L` of the label space when known. ``None`` means unknown: labels
        outside the listed ones are assumed to exist.
    """

    labels: np.ndarray
    counts: np.ndarray
    total: np.ndarray
    num_labels: int | None = None

    def __post_init__(self) -> None:
        labels = _check_int_array(self.labels, name="labels", ndim=2)
        counts = _check_int_array(self.counts, name="counts", ndim=2)
        total = _check_int_array(self.total, name="total", ndim=1)
        num_labels = check_num_labels(self.num_labels)
        if labels.shape != counts.shape or labels.shape[1] < 1:
            raise CertificationInputError(
                "labels and counts must share a shape (num_inputs, r) with r >= 1; got "
                f"labels {labels.shape} and counts {counts.shape}"
            )
        if total.shape != (labels.shape[0],):
            raise CertificationInputError(f"total must have shape ({labels.shape[0]},); got {total.shape}")
        if labels.shape[0] < 1:
            raise CertificationInputError(f"TopVotes must hold >= 1 input; got {labels.shape}")
        if counts.min() < 0:
            raise CertificationInputError(f"counts must be non-negative; got min={counts.min()}")
        if np.any(np.diff(counts, axis=1) > 0):
            raise CertificationInputError("counts must be non-increasing along each row")
        pad = labels == -1
        if labels.min() < -1 or np.any(counts[pad] != 0):
            raise CertificationInputError("labels must be >= 0, or -1 (padding) with count 0")
        if num_labels is not None and labels.max() >= num_labels:
            raise CertificationInputError(
                f"labels must be in [0, num_labels - 1] = [0, {num_labels - 1}]; got label {labels.max()}"
            )
        if np.any(pad[:, :-1] & ~pad[:, 1:]):
            raise CertificationInputError("padding (label -1) must come after the listed labels")
        residual = total - counts.sum(axis=1)
        if np.any(residual < 0):
            raise CertificationInputError("total must be >= the sum of the listed counts")
        if np.any((residual > 0) & (counts[:, -1] < 1)):
            raise CertificationInputError(
                "a row whose listed counts sum below total must list r labels with count >= 1 "
                "(unseen labels cannot hold more votes than the r-th listed label)"
            )
        ordered = np.sort(np.where(pad, -1 - np.arange(labels.shape[1]), labels), axis=1)
        if np.any(np.diff(ordered, axis=1) == 0):
            raise CertificationInputError("labels must be distinct within each row")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "total", total)
        object.__setattr__(self, "num_labels", num_labels)

    @property
    def num_inputs(self) -> int:
        """Number of test inputs."""
        return int(self.labels.shape[0])

    @property
    def r(self) -> int:
        """Number of listed labels per input."""
        return int(self.labels.shape[1])

    @classmethod
    def from_dense(cls, counts: ArrayLike, r: int) -> TopVotes:
        """Keep the ``r`` most-voted labels of each row of a dense votes matrix.

        Ties in count are kept in label order (smaller label first), which is the
        invariant the certificates rely on.

        Parameters
        ----------
        counts : array_like of int
            ``(num_inputs, num_labels)`` votes matrix.
        r : int
            Labels kept per input, in ``[1, num_labels]``.

        Raises
        ------
        CertificationInputError
            If ``counts`` is not a non-negative 2-D integer array or ``r`` is outside
            ``[1, num_labels]``.
        """
        dense = check_dense_counts(counts)
        r = _check_r(r, upper=dense.shape[1])
        order = np.argsort(-dense, axis=1, kind="stable")[:, :r]
        return cls(
            labels=order,
            counts=np.take_along_axis(dense, order, axis=1),
            total=dense.sum(axis=1),
            num_labels=dense.shape[1],
        )


def top_votes_from_predictions(predictions: ArrayLike, r: int, *, num_labels: int | None = None) -> TopVotes:
    """Build :class:`TopVotes` from the group models' predicted labels.

    Memory is O(num_groups * num_inputs); no ``num_inputs x num_labels`` array is
    allocated.

    Parameters
    ----------
    predictions : array_like of int
        ``(num_groups, num_inputs)`` labels, ``predictions[g, j]`` the label group model
        ``g`` predicts for input ``j``; non-negative.
    r : int
        Labels kept per input, ``>= 1``.
    num_labels : int, optional
        Size of the label space; every prediction must be below it.

    Returns
    -------
    TopVotes
        Rows with fewer than ``r`` distinct predicted labels are padded with label ``-1``
        and count ``0``; ``total`` is ``num_groups`` for every input.

    Raises
    ------
    CertificationInputError
        If ``predictions`` is not a 2-D non-negative integer array with >= 1 group and
        >= 1 input, ``r < 1``, or a prediction is ``>= num_labels``.
    """
    preds = _check_int_array(predictions, name="predictions", ndim=2)
    r = _check_r(r)
    num_labels = check_num_labels(num_labels)
    num_groups, num_inputs = preds.shape
    if num_groups < 1 or num_inputs < 1:
        raise CertificationInputError(
            f"predictions must have shape (num_groups >= 1, num_inputs >= 1); got {preds.shape}"
        )
    if preds.min() < 0:
        raise CertificationInputError(f"predictions must be >= 0; got min={preds.min()}")
    if num_labels is not None and preds.max() >= num_labels:
        raise CertificationInputError(f"predictions must be < num_labels={num_labels}; got max={preds.max()}")
    # One key per (input, label): unique keys give the nonzero entries of the votes matrix.
    width = np.int64(preds.max()) + 1
    keys = np.arange(num_inputs, dtype=np.int64)[None, :] * width + preds
    uniq, cnt = np.unique(keys.ravel(), return_counts=True)
    rows, labs = np.divmod(uniq, width)
    # Order each row by count descending, then label ascending (the TopVotes invariant).
    order = np.lexsort((labs, -cnt, rows))
    rows, labs, cnt = rows[order], labs[order], cnt[order]
    starts = np.searchsorted(rows, np.arange(num_inputs))
    rank = np.arange(rows.size) - starts[rows]
    keep = rank < r
    labels = np.full((num_inputs, r), -1, dtype=np.int64)
    counts = np.zeros((num_inputs, r), dtype=np.int64)
    labels[rows[keep], rank[keep]] = labs[keep]
    counts[rows[keep], rank[keep]] = cnt[keep]
    total = np.full(num_inputs, num_groups, dtype=np.int64)
    return TopVotes(labels=labels, counts=counts, total=total, num_labels=num_labels)


@dataclass(frozen=True)
class VoteSummary:
    r"""What the certificates need from a votes matrix, one entry per input.

    Attributes
    ----------
    predictions : numpy.ndarray
        Predicted label :math:`y` (``-1`` where the input has no vote).
    top : numpy.ndarray
        :math:`N_y`.
    runner_up : numpy.ndarray
        An upper bound on :math:`\max_{i \ne y} N_i` (exact for dense votes).
    runner_up_tie : numpy.ndarray
        An upper bound on :math:`\max_{i \ne y} (N_i + [i < y])` (exact for dense votes).
    total : numpy.ndarray
        :math:`N = \sum_i N_i`.
    """

    predictions: np.ndarray
    top: np.ndarray
    runner_up: np.ndarray
    runner_up_tie: np.ndarray
    total: np.ndarray


def _pick_tied(sorted_tied_labels: np.ndarray, num_tied: np.ndarray, draws: np.ndarray | None) -> np.ndarray:
    """Pick the smallest tied label, or the ``floor(u * num_tied)``-th smallest."""
    if draws is None:
        return sorted_tied_labels[:, 0]
    index = np.minimum((draws * num_tied).astype(np.int64), np.maximum(num_tied - 1, 0))
    return np.take_along_axis(sorted_tied_labels, index[:, None], axis=1)[:, 0]


def summarize_votes(votes: np.ndarray | TopVotes, *, tie_draws: np.ndarray | None = None) -> VoteSummary:
    r"""Predicted label, its count and the runner-up bounds of every input.

    The prediction is the most-voted label. Ties go to the smallest label when
    ``tie_draws`` is ``None``; otherwise input :math:`j` takes the
    :math:`\lfloor u_j T_j \rfloor`-th smallest of its :math:`T_j` tied labels, so the
    choice depends on label identities only and is the same for dense votes and for
    :class:`TopVotes` that list every tied label.

    For :class:`TopVotes` an unseen label :math:`i` has :math:`N_i \le u` with
    :math:`u = \min(c_r, N - \sum_{\text{listed}} c)`, and its index is unknown, so it
    enters the runner-up bounds as :math:`u` and as
    :math:`\min(u + [\exists\, \text{unseen } i < y],\, N_y)`: an unseen label below
    :math:`y` exists unless all of :math:`0, \dots, y - 1` are listed, and an unseen label
    tied with :math:`N_y = c_r` has a larger index than :math:`y` by the invariant. Both
    bounds are therefore never below the dense values, and equal them when every label is
    listed.
    """
    if isinstance(votes, TopVotes):
        return _summarize_top(votes, tie_draws)
    return _summarize_dense(votes, tie_draws)


def _summarize_dense(counts: np.ndarray, draws: np.ndarray | None) -> VoteSummary:
    num_inputs, num_labels = counts.shape
    rows = np.arange(num_inputs)
    top = counts.max(axis=1)
    tied = counts == top[:, None]
    label_ids = np.arange(num_labels)
    sorted_tied = np.sort(np.where(tied, label_ids[None, :], num_labels), axis=1)
    y = _pick_tied(sorted_tied, tied.sum(axis=1), draws)
    others = counts.copy()
    others[rows, y] = -1
    runner_up = others.max(axis=1)
    others += label_ids[None, :] < y[:, None]
    runner_up_tie = others.max(axis=1)
    total = counts.sum(axis=1)
    y = np.where(total > 0, y, -1)
    return VoteSummary(y, top, runner_up, runner_up_tie, total)


def _summarize_top(votes: TopVotes, draws: np.ndarray | None) -> VoteSummary:
    labels, counts, total = votes.labels, votes.counts, votes.total
    num_inputs, r = labels.shape
    rows = np.arange(num_inputs)
    listed = labels >= 0
    top = counts[:, 0]
    tied = listed & (counts == top[:, None])
    big = np.iinfo(np.int64).max
    sorted_tied = np.sort(np.where(tied, labels, big), axis=1)
    y = _pick_tied(sorted_tied, tied.sum(axis=1), draws)
    y_col = np.argmax(listed & (labels == y[:, None]), axis=1)
    others = np.where(listed, counts, -1)
    others[rows, y_col] = -1
    listed_runner_up = others.max(axis=1)
    below = listed & (labels < y[:, None])
    others_tie = np.where(listed, counts + below, -1)
    others_tie[rows, y_col] = -1
    listed_runner_up_tie = others_tie.max(axis=1)
    num_listed = listed.sum(axis=1)
    if votes.num_labels is None:
        has_unseen = np.ones(num_inputs, dtype=bool)
    else:
        has_unseen = num_listed < votes.num_labels
    unseen_bound = np.minimum(counts[:, -1], total - counts.sum(axis=1))
    unseen_below = below.sum(axis=1) < y
    unseen_tie = np.minimum(unseen_bound + unseen_below, top)
    runner_up = np.where(has_unseen, np.maximum(listed_runner_up, unseen_bound), listed_runner_up)
    runner_up_tie = np.where(has_unseen, np.maximum(listed_runner_up_tie, unseen_tie), listed_runner_up_tie)
    y = np.where(total > 0, y, -1)
    return VoteSummary(y, top, runner_up, runner_up_tie, total)
