"""FLCert-D: hand-computed levels, a brute-force adversary, validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.certify import CertificationInputError, flcert_d


def majority(counts: np.ndarray) -> int:
    """Majority vote with ties toward the smallest label (np.argmax returns the first)."""
    return int(np.argmax(counts))


def compositions(total: int, parts: int):
    """All vectors of ``parts`` non-negative integers summing to ``total``."""
    for cuts in itertools.combinations(range(total + parts - 1), parts - 1):
        bounds = (-1, *cuts, total + parts - 1)
        yield np.array([bounds[i + 1] - bounds[i] - 1 for i in range(parts)])


def some_attack_flips(counts: np.ndarray, m: int) -> bool:
    """Whether changing exactly m group votes (any votes, to any labels) flips the vote.

    Changing fewer votes is covered too: a vote may be "changed" to its own label.
    """
    y = majority(counts)
    removals = [np.array(r) for r in itertools.product(*(range(c + 1) for c in counts)) if sum(r) == m]
    for removed in removals:
        for added in compositions(m, len(counts)):
            if majority(counts - removed + added) != y:
                return True
    return False


@pytest.mark.parametrize(
    ("counts", "prediction", "level"),
    [
        # y = 0; i = 1: floor((5 - 3 - 0) / 2) = 1; i = 2: floor((5 - 2 - 0) / 2) = 1 -> 1
        ([5, 3, 2], 0, 1),
        # y = 1; i = 0: floor((5 - 3 - 1) / 2) = 0 (label 0 wins a tie) -> 0
        ([3, 5, 2], 1, 0),
        # tie 4-4 goes to label 0; i = 1: floor((4 - 4 - 0) / 2) = 0 -> 0
        ([4, 4, 2], 0, 0),
        # y = 2; i = 0: floor((6 - 2 - 1) / 2) = 1; i = 1: same -> 1
        ([2, 2, 6], 2, 1),
        # y = 0 unanimous over 10 groups: floor((10 - 0) / 2) = 5
        ([10, 0], 0, 5),
        # y = 1 unanimous over 10 groups: floor((10 - 0 - 1) / 2) = 4 (5 flips tie 5-5 -> 0)
        ([0, 10], 1, 4),
        # y = 3; i = 0: floor((9 - 1 - 1) / 2) = 3; i = 2: floor((9 - 4 - 1) / 2) = 2 -> 2
        ([1, 0, 4, 9], 3, 2),
        # single vote: y = 1; i = 0: floor((1 - 0 - 1) / 2) = 0
        ([0, 1, 0], 1, 0),
    ],
)
def test_hand_computed_levels(counts, prediction, level):
    predictions, levels = flcert_d(np.array([counts]))
    assert predictions.tolist() == [prediction]
    assert levels.tolist() == [level]


def test_rows_are_independent_and_empty_rows_abstain():
    counts = np.array([[5, 3, 2], [0, 0, 0], [0, 10, 0]])
    predictions, levels = flcert_d(counts)
    assert predictions.tolist() == [0, -1, 1]
    assert levels.tolist() == [1, -1, 4]
    assert predictions.dtype == np.int64 and levels.dtype == np.int64


@settings(max_examples=120, deadline=None, database=None)
@given(
    st.integers(min_value=2, max_value=4).flatmap(
        lambda num_labels: st.lists(
            st.integers(min_value=0, max_value={2: 9, 3: 6, 4: 4}[num_labels]),
            min_size=num_labels,
            max_size=num_labels,
        )
    )
)
def test_level_is_sound_and_tight_against_brute_force(votes):
    counts = np.array(votes)
    predictions, levels = flcert_d(counts[None, :])
    if counts.sum() == 0:
        assert (predictions[0], levels[0]) == (-1, -1)
        return
    level = int(levels[0])
    assert predictions[0] == majority(counts)
    assert level >= 0
    # Sound: no change of up to `level` group votes flips the prediction.
    for m in range(level + 1):
        assert not some_attack_flips(counts, m), (votes, m)
    # Tight: one more changed vote can flip it.
    assert some_attack_flips(counts, level + 1), votes


def test_level_grows_by_one_per_two_votes():
    # Moving the runner-up's votes to the top label raises the gap by 2 per vote.
    rows = np.array([[6 + t, 6 - t] for t in range(7)])
    _, levels = flcert_d(rows)
    assert levels.tolist() == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        (np.array([[3], [2]]), "counts must have >= 2 labels"),
        (np.array([[3, -1]]), "counts must be non-negative"),
        (np.array([[3.0, 1.0]]), "counts must be an integer array"),
        (np.array([3, 1]), "counts must be 2-D"),
        (np.zeros((0, 3), dtype=int), "counts must hold >= 1 input"),
    ],
)
def test_bad_counts_raise(counts, match):
    with pytest.raises(CertificationInputError, match=match):
        flcert_d(counts)
