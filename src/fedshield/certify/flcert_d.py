r"""FLCert-D: certified majority vote over disjoint client groups.

FLCert-D [Cao et al., "FLCert: Provably Secure Federated Learning against Poisoning
Attacks", IEEE TIFS 2022] divides the clients into :math:`N` disjoint groups, trains one
global model per group and predicts by majority vote,

.. math:: y = \operatorname*{arg\,max}_i N_i \quad \text{(ties to the smallest label)},

where :math:`N_i` is the number of group models predicting label :math:`i`. A malicious
client sits in exactly one group, so :math:`m` malicious clients change at most :math:`m`
votes. Moving one vote from :math:`y` to :math:`i` lowers :math:`N_y - N_i` by 2, and
:math:`y` still wins against :math:`i` while :math:`N'_y - N'_i > 0`, or :math:`= 0` with
:math:`y < i`. The certified security level (paper eq. 12) is therefore

.. math::

    m^* = \min_{i \ne y} \left\lfloor \frac{N_y - N_i - [i < y]}{2} \right\rfloor ,

and it is tight: :math:`m^* + 1` votes moved from :math:`y` to the minimising :math:`i`
flip the prediction.
"""

from __future__ import annotations

import numpy as np

from fedshield.certify.errors import CertificationInputError
from fedshield.certify.sparse import TopVotes, check_dense_counts, summarize_votes

__all__ = ["flcert_d"]


def flcert_d(counts: np.ndarray | TopVotes) -> tuple[np.ndarray, np.ndarray]:
    r"""Majority-vote predictions and FLCert-D certified security levels.

    .. math:: m^* = \min_{i \ne y} \lfloor (N_y - N_i - [i < y]) / 2 \rfloor \quad \text{(eq. 12)}

    Parameters
    ----------
    counts : array_like of int or TopVotes
        ``(num_inputs, num_labels)`` votes matrix, ``counts[j, i]`` the number of group
        models predicting label ``i`` for input ``j``; or its sparse top-``r`` form. For
        :class:`TopVotes` a label that is not listed is taken to have the largest count it
        can have and, unless every label below the prediction is listed, an index below
        the prediction; the level is then never higher than the dense one (and equal to it
        when every label is listed).

    Returns
    -------
    predictions : numpy.ndarray
        ``(num_inputs,)`` int64 predicted labels; ``-1`` (abstain) for an input with no
        vote.
    levels : numpy.ndarray
        ``(num_inputs,)`` int64 certified security levels :math:`m^* \ge 0`: no attack by
        at most :math:`m^*` malicious clients changes the prediction. ``-1`` where the
        prediction is ``-1``.

    Raises
    ------
    CertificationInputError
        If ``counts`` is not a non-negative 2-D integer array with >= 1 row, or the label
        space has fewer than 2 labels (with one label nothing can flip, so no finite level
        is meaningful).
    """
    votes: np.ndarray | TopVotes
    if isinstance(counts, TopVotes):
        votes = counts
        if counts.num_labels is not None and counts.num_labels < 2:
            raise CertificationInputError(
                f"num_labels must be >= 2 for a certificate; got num_labels={counts.num_labels}"
            )
    else:
        dense = check_dense_counts(counts)
        if dense.shape[1] < 2:
            raise CertificationInputError(
                f"counts must have >= 2 labels (columns) for a certificate; got {dense.shape[1]}"
            )
        votes = dense
    summary = summarize_votes(votes)
    abstain = summary.total == 0
    levels = np.where(abstain, -1, (summary.top - summary.runner_up_tie) // 2)
    return summary.predictions, levels.astype(np.int64)
