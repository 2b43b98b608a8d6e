r"""FLIP's hardening: train on trigger-stamped copies that keep their true labels.

A benign FLIP client [Zhang et al., ICLR 2023] stamps the triggers it inverted on
some of its own samples and trains on them *with their true labels*. The backdoored model
maps a stamped input to the target; these samples teach it the opposite, which unlearns the
shortcut that a trigger of that shape and place offers. Aggregation then carries the
hardening into the global model (Theorem 1 bounds the loss change on backdoor samples).

:func:`hardening_transform` turns a list of triggers into a
:data:`~fedshield.task.training.BatchTransform`: it returns the clean batch followed by
``round(stamped_share * batch_size)`` stamped copies. A sample can carry a trigger only when
it is not of the trigger's target label and, for a pair trigger, is of its source label
(FLIP stamps a pair trigger on its source samples, a universal one on every non-target
sample); each chosen sample gets one of its eligible triggers, uniformly at random
(:func:`stamp_eligible`, which the adaptive attacker of
:mod:`fedshield.attacks.adaptive_flip` shares to label the same copies with its target).
"""

from __future__ import annotations

import torch

from fedshield.flip.inversion import InvertedTrigger, blend
from fedshield.task.training import BatchTransform


class HardeningError(ValueError):
    """Hardening settings out of range, or triggers that do not fit together."""


def eligibility(triggers: list[InvertedTrigger], labels: torch.Tensor) -> torch.Tensor:
    """(N, T) boolean matrix: may sample ``n`` carry trigger ``t``?

    True when ``labels[n]`` is not trigger ``t``'s target and, for a pair trigger, equals its
    source label.
    """
    labels = labels.reshape(-1, 1)
    targets = torch.tensor([trigger.target_label for trigger in triggers], device=labels.device)
    allowed = labels != targets.reshape(1, -1)
    for column, trigger in enumerate(triggers):
        if trigger.source_label is not None:
            allowed[:, column] &= labels[:, 0] == trigger.source_label
    return allowed


def stamp_eligible(
    x: torch.Tensor,
    y: torch.Tensor,
    triggers: list[InvertedTrigger],
    *,
    count: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Stamped copies of up to ``count`` samples that may carry one of ``triggers``.

    The samples are drawn without replacement among those eligible for some trigger
    (:func:`eligibility`): the first ``count`` of a ``torch.randperm`` of the candidates. Each
    then gets one of its eligible triggers uniformly at random, the arg max of ``torch.rand``
    scores over its eligible triggers, drawn after the permutation; the copy is
    :func:`~fedshield.flip.inversion.blend`, :math:`(1 - m_n) \odot x_n + m_n \odot p_n`. When no
    sample is eligible or ``count`` is 0, nothing is drawn from ``generator``.

    Parameters
    ----------
    x, y : torch.Tensor
        The batch: (N, C, H, W) inputs and (N,) labels; not modified.
    triggers : list[InvertedTrigger]
        At least one, all of the inputs' (C, H, W).
    count : int
        Copies wanted, >= 0; fewer when fewer samples are eligible.
    generator : torch.Generator
        CPU generator of the draws.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``chosen`` (K,) indices into the batch (on ``x``'s device) and the (K, C, H, W) stamped
        copies ``x[chosen]``, with ``K = min(count, eligible samples)``.

    Raises
    ------
    HardeningError
        If ``triggers`` is empty or ``count`` is negative.
    """
    if not triggers:
        raise HardeningError("hardening needs at least one trigger; got none")
    if count < 0:
        raise HardeningError(f"the number of stamped copies must be >= 0; got {count}")
    allowed = eligibility(triggers, y).cpu()
    candidates = torch.nonzero(allowed.any(dim=1)).flatten()
    count = min(count, len(candidates))
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device), x[:0]
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
    # One eligible trigger per chosen sample, uniformly: argmax of uniform scores where allowed.
    scores = torch.rand((count, len(triggers)), generator=generator)
    which = torch.where(allowed[chosen], scores, torch.full_like(scores, -1.0)).argmax(dim=1)
    masks = torch.stack([trigger.mask for trigger in triggers])[which]
    patterns = torch.stack([trigger.pattern for trigger in triggers])[which]
    chosen = chosen.to(x.device)
    stamped = blend(x[chosen], masks.to(device=x.device, dtype=x.dtype), patterns.to(device=x.device, dtype=x.dtype))
    return chosen, stamped


def hardening_transform(triggers: list[InvertedTrigger], *, stamped_share: float) -> BatchTransform:
    """A batch transform that appends trigger-stamped copies with their true labels.

    Parameters
    ----------
    triggers : list[InvertedTrigger]
        The plausible triggers of this round; all must have the same (C, H, W).
    stamped_share : float
        Number of stamped copies as a share of the batch size, in (0, 1]. Fewer copies are
        made when fewer samples of the batch are eligible for any trigger.

    Returns
    -------
    BatchTransform
        ``(x, y, generator) -> (cat(x, stamped), cat(y, y[chosen]))``; the samples to stamp
        and their triggers are drawn from ``generator``, so the result is a pure function of
        the batch and the generator state.
    """
    if not triggers:
        raise HardeningError("hardening needs at least one trigger; got none")
    if not 0.0 < stamped_share <= 1.0:
        raise HardeningError(f"stamped_share must be in (0, 1]; got {stamped_share}")
    shape = tuple(triggers[0].pattern.shape)
    for trigger in triggers:
        if tuple(trigger.pattern.shape) != shape:
            raise HardeningError(f"triggers differ in shape: {tuple(trigger.pattern.shape)} and {shape}")

    def transform(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(x.shape[1:]) != shape:
            raise HardeningError(
                f"batch inputs must have shape (N, {', '.join(map(str, shape))}); got {tuple(x.shape)}"
            )
        count = int(round(stamped_share * len(y)))
        chosen, stamped = stamp_eligible(x, y, triggers, count=count, generator=generator)
        if len(chosen) == 0:
            return x, y
        return torch.cat([x, stamped]), torch.cat([y, y[chosen]])

    return transform
