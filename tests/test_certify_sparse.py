"""Sparse top-r votes: same certificates as dense when r = L, never more when r < L."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedshield.certify import (
    CertificationInputError,
    TopVotes,
    flcert_d,
    flcert_p,
    flcert_p_exact,
    top_votes_from_predictions,
)

P_MODES = [
    pytest.param({"bounds": "paper"}, id="paper"),
    pytest.param({"bounds": "simultaneous"}, id="simultaneous"),
]


def votes_with_fixed_total(rng, num_inputs, num_labels, num_votes, concentration=0.5):
    probs = rng.dirichlet(np.full(num_labels, concentration), num_inputs)
    return np.stack([rng.multinomial(num_votes, p) for p in probs])


small_counts = st.integers(min_value=2, max_value=6).flatmap(
    lambda num_labels: hnp.arrays(np.int64, (3, num_labels), elements=st.integers(min_value=0, max_value=6))
)


def test_from_dense_keeps_the_top_labels_in_order():
    counts = np.array([[1, 5, 5, 0, 3]])
    votes = TopVotes.from_dense(counts, 3)
    # count descending, then label ascending: 5 (label 1), 5 (label 2), 3 (label 4)
    assert votes.labels.tolist() == [[1, 2, 4]]
    assert votes.counts.tolist() == [[5, 5, 3]]
    assert votes.total.tolist() == [14] and votes.num_labels == 5
    assert (votes.num_inputs, votes.r) == (1, 3)


@settings(max_examples=150, deadline=None, database=None)
@given(small_counts)
def test_flcert_d_sparse_equals_dense_at_full_r_and_never_exceeds_it(counts):
    dense_predictions, dense_levels = flcert_d(counts)
    num_labels = counts.shape[1]
    full = flcert_d(TopVotes.from_dense(counts, num_labels))
    assert np.array_equal(full[0], dense_predictions)
    assert np.array_equal(full[1], dense_levels)
    for r in range(1, num_labels):
        predictions, levels = flcert_d(TopVotes.from_dense(counts, r))
        assert np.array_equal(predictions, dense_predictions)  # ties kept in label order
        assert np.all(levels <= dense_levels), (r, levels, dense_levels)
        assert np.all(levels[dense_levels >= 0] >= 0)


@pytest.mark.parametrize("mode", P_MODES)
def test_flcert_p_sparse_equals_dense_at_full_r_and_never_exceeds_it(mode):
    rng = np.random.default_rng(0)
    counts = votes_with_fixed_total(rng, 500, 8, 300)
    dense = flcert_p(counts, n=500, k=5, alpha=0.01, **mode)
    full = flcert_p(TopVotes.from_dense(counts, 8), n=500, k=5, alpha=0.01, **mode)
    assert np.array_equal(full[0], dense[0]) and np.array_equal(full[1], dense[1])
    for r in (1, 2, 4):
        predictions, levels = flcert_p(TopVotes.from_dense(counts, r), n=500, k=5, alpha=0.01, **mode)
        assert np.all(levels <= dense[1])
        certified = levels >= 0
        assert np.array_equal(predictions[certified], dense[0][certified])
        if mode["bounds"] == "paper":  # uses N_y only, which the sparse form keeps
            assert np.array_equal(levels, dense[1])


@settings(max_examples=60, deadline=None, database=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=2, max_value=5))
def test_flcert_p_exact_sparse_never_exceeds_dense(seed, num_labels):
    n, k = 9, 2  # C(9, 2) = 36 groups
    counts = votes_with_fixed_total(np.random.default_rng(seed), 20, num_labels, 36, 0.3)
    dense = flcert_p_exact(counts, n=n, k=k)
    full = flcert_p_exact(TopVotes.from_dense(counts, num_labels), n=n, k=k)
    assert np.array_equal(full[0], dense[0]) and np.array_equal(full[1], dense[1])
    for r in range(1, num_labels):
        predictions, levels = flcert_p_exact(TopVotes.from_dense(counts, r), n=n, k=k)
        assert np.array_equal(predictions, dense[0])
        assert np.all(levels <= dense[1])


def test_from_predictions_matches_dense_counts():
    rng = np.random.default_rng(1)
    num_groups, num_inputs, num_labels = 40, 300, 7
    predictions = rng.choice(num_labels, size=(num_groups, num_inputs), p=[0.4, 0.2, *[0.08] * 5])
    dense = np.zeros((num_inputs, num_labels), dtype=np.int64)
    np.add.at(dense, (np.arange(num_inputs)[None, :], predictions), 1)
    for r in (1, 3, num_labels):
        sparse = top_votes_from_predictions(predictions, r, num_labels=num_labels)
        reference = TopVotes.from_dense(dense, r)
        voted = sparse.counts > 0  # from_dense also lists labels with no vote
        assert np.array_equal(sparse.labels[voted], reference.labels[voted])
        assert np.array_equal(sparse.counts, reference.counts)
        assert np.all(sparse.labels[~voted] == -1)
        assert np.all(sparse.total == num_groups)
    full = top_votes_from_predictions(predictions, num_labels, num_labels=num_labels)
    for got, expected in zip(flcert_d(full), flcert_d(dense), strict=True):
        assert np.array_equal(got, expected)
    got = flcert_p(full, n=200, k=3, alpha=0.01, bounds="simultaneous")
    expected = flcert_p(dense, n=200, k=3, alpha=0.01, bounds="simultaneous")
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


def test_padded_rows_use_zero_for_unseen_labels():
    # Labels 1 and 3 voted (5 and 2 votes), no other label did: with num_labels known the
    # unseen labels hold 0 votes, and label 0 < y = 1 is unseen, so the runner-up term is
    # max(2, 0 + 1) = 2 and the level is floor((5 - 2) / 2) = 1, as in dense [0, 5, 0, 2].
    predictions = np.array([[1], [1], [1], [1], [1], [3], [3]])
    votes = top_votes_from_predictions(predictions, 4, num_labels=4)
    assert votes.labels.tolist() == [[1, 3, -1, -1]]
    assert flcert_d(votes)[1].tolist() == flcert_d(np.array([[0, 5, 0, 2]]))[1].tolist() == [1]


def test_large_vocabulary_without_a_dense_matrix():
    rng = np.random.default_rng(2)
    num_groups, num_inputs, vocabulary = 100, 2000, 50_000
    truth = rng.integers(0, vocabulary, num_inputs)
    noise = rng.integers(0, vocabulary, (num_groups, num_inputs))
    predictions = np.where(rng.random((num_groups, num_inputs)) < 0.8, truth, noise)
    votes = top_votes_from_predictions(predictions, 5, num_labels=vocabulary)
    labels, levels_d = flcert_d(votes)
    assert np.mean(labels == truth) > 0.99
    assert np.all(levels_d[labels == truth] >= 20)  # ~80 of 100 votes against ~1
    _, levels_p = flcert_p(votes, n=10_000, k=20, alpha=0.001, bounds="simultaneous")
    assert (levels_p >= 0).mean() > 0.99


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": [[0, 1]], "counts": [[1, 2]], "total": [3]}, "non-increasing"),
        ({"labels": [[0, 0]], "counts": [[2, 1]], "total": [3]}, "distinct"),
        ({"labels": [[0, -1]], "counts": [[2, 1]], "total": [3]}, "padding"),
        ({"labels": [[-1, 0]], "counts": [[0, 0]], "total": [0]}, "padding"),
        ({"labels": [[0, 1]], "counts": [[2, 1]], "total": [2]}, "total must be >="),
        ({"labels": [[0, 1]], "counts": [[2, 0]], "total": [3]}, "unseen labels"),
        ({"labels": [[0, 5]], "counts": [[2, 1]], "total": [3], "num_labels": 5}, "num_labels"),
        ({"labels": [[0, 1]], "counts": [[2, 1]], "total": [3, 3]}, "total must have shape"),
        ({"labels": [[0.0, 1.0]], "counts": [[2, 1]], "total": [3]}, "labels must be an integer"),
    ],
)
def test_top_votes_validation(kwargs, match):
    with pytest.raises(CertificationInputError, match=match):
        TopVotes(**{k: np.asarray(v) if k != "num_labels" else v for k, v in kwargs.items()})


def test_builder_validation():
    with pytest.raises(CertificationInputError, match=r"r must be in \[1, 3\]"):
        TopVotes.from_dense(np.array([[1, 2, 3]]), 4)
    with pytest.raises(CertificationInputError, match="r must be an integer >= 1"):
        top_votes_from_predictions(np.array([[1, 2]]), 0)
    with pytest.raises(CertificationInputError, match="predictions must be >= 0"):
        top_votes_from_predictions(np.array([[1, -2]]), 2)
    with pytest.raises(CertificationInputError, match="predictions must be < num_labels=2"):
        top_votes_from_predictions(np.array([[1, 2]]), 2, num_labels=2)
    with pytest.raises(CertificationInputError, match="num_labels must be >= 2"):
        flcert_d(TopVotes.from_dense(np.array([[3]]), 1))
