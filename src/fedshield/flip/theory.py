r"""FLIP's Theorem 1 setting, checked with bounds that hold exactly.

FLIP [Zhang et al., ICLR 2023, Theorem 1] analyses multinomial logistic regression:
how much does the cross-entropy loss of an input change when benign clients' hardening moves
the aggregated weights from :math:`W` to :math:`W + \Delta W`? With logits
:math:`z = W x + b`, the change :math:`\Delta z = \Delta W x + \Delta b`,
:math:`q = \operatorname{softmax}(z)` and the loss :math:`L_g = \operatorname{LSE}(z) - z_g`
of label :math:`g`,

.. math:: \Delta L_g = \operatorname{LSE}(z + \Delta z) - \operatorname{LSE}(z) - \Delta z_g .

Two exact facts about log-sum-exp bound the first difference:

* convexity at :math:`z`: :math:`\operatorname{LSE}(z + \Delta z) - \operatorname{LSE}(z) \ge
  \nabla \operatorname{LSE}(z) \cdot \Delta z = q \cdot \Delta z`;
* monotonicity and :math:`\operatorname{LSE}(z + c \mathbf{1}) = \operatorname{LSE}(z) + c`:
  :math:`\min_t \Delta z_t \le \operatorname{LSE}(z + \Delta z) - \operatorname{LSE}(z) \le
  \max_t \Delta z_t`.

Since :math:`q \cdot \Delta z \ge \min_t \Delta z_t`, the tight exact statement is

.. math:: q \cdot \Delta z - \Delta z_g \;\le\; \Delta L_g \;\le\; \max_t \Delta z_t - \Delta z_g .

The lower bound is the first-order (linearised) loss change :math:`(q - e_g) \cdot \Delta z`
itself: by convexity the linearisation never over-estimates the change, so it is a proven
bound, not an approximation. For a backdoor input with :math:`g` the attack's target,
hardening aims at :math:`\Delta z_g < q \cdot \Delta z`, which by the lower bound *guarantees*
a loss increase, whatever the step size.

A form sometimes quoted for this theorem, :math:`\min_t \Delta z_t - q \cdot \Delta z \le
\Delta L_g \le \max_t \Delta z_t - q \cdot \Delta z`, is exact only for the
:math:`q`-weighted mean over labels, :math:`\sum_g q_g \Delta L_g = \operatorname{LSE}(z +
\Delta z) - \operatorname{LSE}(z) - q \cdot \Delta z`. For one label it fails even to first
order: with uniform :math:`q` over :math:`L` labels and :math:`\Delta z = -M e_g`,
:math:`\Delta L_g \approx (1 - 1/L) M` while that upper bound is :math:`M / L`. This module
therefore checks the exact bounds above (the full text of the paper's statement could not be
consulted when this was written; the bounds here are proved from scratch).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class TheoryInputError(ValueError):
    """Shapes of inputs, weights and labels that do not fit the linear model."""


class LossChangeBounds(NamedTuple):
    """Per-input exact bounds on, and value of, the cross-entropy change (float64, (N,))."""

    lower: np.ndarray
    actual: np.ndarray
    upper: np.ndarray


def _as_double(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)).double()


def loss_change_bounds(
    x: np.ndarray | torch.Tensor,
    *,
    weight: np.ndarray | torch.Tensor,
    weight_change: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    bias: np.ndarray | torch.Tensor | None = None,
    bias_change: np.ndarray | torch.Tensor | None = None,
) -> LossChangeBounds:
    r"""Exact bounds on the change of :math:`L_g` when :math:`W \to W + \Delta W` (see module).

    .. math:: q \cdot \Delta z - \Delta z_g \le \Delta L_g \le \max_t \Delta z_t - \Delta z_g

    Parameters
    ----------
    x : array, (N, d) or (N, ...)
        Inputs; flattened to (N, d).
    weight, weight_change : array, (L, d)
        :math:`W` and :math:`\Delta W` in ``torch.nn.Linear`` layout (logits ``x @ W.T + b``).
    labels : array of int, (N,)
        The label :math:`g` whose loss is tracked for each input (the target for backdoor inputs).
    bias, bias_change : array, (L,), optional
        :math:`b` and :math:`\Delta b` (zero when omitted).

    Returns
    -------
    LossChangeBounds
        ``lower <= actual <= upper`` for every input, up to float64 rounding.
    """
    inputs = _as_double(x)
    inputs = inputs.reshape(len(inputs), -1)
    weight_t, change_t = _as_double(weight), _as_double(weight_change)
    if weight_t.ndim != 2 or weight_t.shape[1] != inputs.shape[1]:
        raise TheoryInputError(f"weight must be (L, {inputs.shape[1]}); got {tuple(weight_t.shape)}")
    if change_t.shape != weight_t.shape:
        raise TheoryInputError(f"weight_change must have shape {tuple(weight_t.shape)}; got {tuple(change_t.shape)}")
    num_labels = weight_t.shape[0]
    bias_t = torch.zeros(num_labels, dtype=torch.float64) if bias is None else _as_double(bias)
    bias_change_t = torch.zeros(num_labels, dtype=torch.float64) if bias_change is None else _as_double(bias_change)
    for name, vector in (("bias", bias_t), ("bias_change", bias_change_t)):
        if tuple(vector.shape) != (num_labels,):
            raise TheoryInputError(f"{name} must have shape ({num_labels},); got {tuple(vector.shape)}")
    label_t = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)).long()
    if tuple(label_t.shape) != (len(inputs),):
        raise TheoryInputError(f"labels must have shape ({len(inputs)},); got {tuple(label_t.shape)}")
    if len(label_t) and (int(label_t.min()) < 0 or int(label_t.max()) >= num_labels):
        raise TheoryInputError(
            f"labels must lie in [0, {num_labels}); got [{int(label_t.min())}, {int(label_t.max())}]"
        )

    logits = inputs @ weight_t.T + bias_t
    change = inputs @ change_t.T + bias_change_t
    column = label_t.reshape(-1, 1)
    change_at_label = change.gather(1, column).flatten()
    probabilities = torch.softmax(logits, dim=1)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(z, dim=1) - z.gather(1, column).flatten()

    actual = loss(logits + change) - loss(logits)
    lower = (probabilities * change).sum(dim=1) - change_at_label
    upper = change.max(dim=1).values - change_at_label
    return LossChangeBounds(lower.numpy(), actual.numpy(), upper.numpy())
