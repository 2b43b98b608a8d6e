r"""A backdoor attacker who knows FLIP and counters its hardening (an adaptive attack).

FLIP [Zhang et al., ICLR 2023] hardens the global model on benign clients: each inverts
Neural Cleanse triggers on the global model it receives and trains copies of its samples
stamped with them *under their true labels*, which unlearns the shortcut the real trigger
offers (:mod:`fedshield.flip.client`). The attacker receives the same global model, knows
the inversion procedure and its settings, and so can predict what the benign clients will
harden against.

:class:`AdaptiveFlipBackdoor` does, in each active round, before its local training:

1. **Invert like a FLIP client.** It runs FLIP's warm-up inversion
   (:func:`~fedshield.flip.inversion.invert_universal`: one trigger that flips a few
   samples of every other label it holds to its ``target_label``) on the global model with its
   own clean data, ``inversions_per_round`` times (each from a fresh random start), and keeps
   the triggers FLIP would keep (:func:`~fedshield.flip.inversion.is_plausible`:
   converged, mask at most ``max_mask_fraction`` of the image). On a backdoored model these
   sit on the real trigger: they are the triggers the benign clients find for the target label.
2. **Counter-harden.** Its batches are the usual backdoor batches (``poison_per_batch`` samples
   replaced by copies stamped with the real trigger and labelled the target, as in
   :class:`~fedshield.attacks.backdoor.BackdoorAttack`) plus ``round(counter_share *
   batch_size)`` extra copies of non-target samples stamped with the inverted triggers and
   labelled **the target**: the exact inputs FLIP's hardening trains towards their true
   labels, with the opposite label. In the aggregate the attacker's gradient on those inputs
   cancels part of the benign clients' hardening, and the trigger region keeps mapping to the
   target with high confidence (which also works against FLIP's low-confidence rejection).

With no plausible trigger (e.g. before the backdoor is learned, when the smallest trigger that
reaches the target is large) the attacker has nothing to counter and trains like
:class:`BackdoorAttack`; a single-shot attack in the first poisoned round is therefore the plain
backdoor. It never runs FLIP's hardening on itself (malicious clients skip the client
defense). This attack is built from the threat model (full knowledge of the defense and its
settings, control of the malicious clients' training), not taken from FLIP's paper or code;
``counter_share=0`` with the same schedule is the plain backdoor, so an experiment can
separate the two.

The inversion is the benign clients' code (:mod:`fedshield.flip.inversion`), not a
copy, so the attacker's triggers are what a FLIP client with the same data would compute.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fedshield.attacks._validation import require_integer, require_positive
from fedshield.attacks.backdoor import BackdoorAttack
from fedshield.attacks.base import AttackError
from fedshield.flip.hardening import stamp_eligible
from fedshield.flip.inversion import (
    InversionConfig,
    InvertedTrigger,
    TriggerInversionError,
    invert_universal,
    is_plausible,
)
from fedshield.task.training import BatchTransform


def counter_hardening_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    triggers: list[InvertedTrigger],
    target_label: int,
    num_stamped: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append up to ``num_stamped`` copies stamped with ``triggers`` and labelled ``target_label``.

    The copies are drawn without replacement from the samples whose label is not the target
    (and, for a pair trigger, equals its source label: the inputs FLIP would stamp); each gets
    one of its eligible triggers uniformly at random, all drawn from ``generator``. Returns
    ``(cat(x, stamped), cat(y, target))``; the inputs are not modified. This is FLIP's
    hardening batch (:func:`fedshield.flip.hardening.hardening_transform`), with the same
    draws (:func:`fedshield.flip.hardening.stamp_eligible`), and the attacker's label instead
    of the true one.
    """
    require_integer("num_stamped", num_stamped, minimum=0)
    if not triggers:
        raise AttackError("counter_hardening_batch needs at least one trigger; got none")
    chosen, stamped = stamp_eligible(x, y, triggers, count=num_stamped, generator=generator)
    if len(chosen) == 0:
        return x, y
    labels = torch.full((len(chosen),), target_label, dtype=y.dtype, device=y.device)
    return torch.cat([x, stamped]), torch.cat([y, labels])


class AdaptiveFlipBackdoor(BackdoorAttack):
    """Pixel-pattern backdoor that inverts FLIP's triggers and trains them towards its target.

    Parameters
    ----------
    counter_share : float
        Copies stamped with the inverted triggers (labelled the target) appended to each batch,
        as a share of the batch size, in [0, 1] (0: the plain backdoor).
    inversions_per_round : int
        Universal inversions to the target label per active round (each from its own random
        start; FLIP's warm-up runs one per target).
    inversion_steps, inversion_learning_rate, initial_cost, min_inversion_success : float
        Budget of each inversion (:class:`~fedshield.flip.inversion.InversionConfig`);
        ``fedshield/conf/attack/adaptive_flip.yaml`` copies them from the run's FLIP settings.
    samples_per_label : int
        Samples of each other label used per inversion (FLIP's warm-up: 5).
    max_mask_fraction : float
        Triggers with a larger mask are dropped, as FLIP drops them.

    **backdoor
        The trigger and :class:`~fedshield.attacks.boosted.BackdoorParameters` of
        :class:`~fedshield.attacks.backdoor.BackdoorAttack`.
    """

    name = "adaptive_flip"

    def __init__(
        self,
        *,
        counter_share: float = 0.3,
        inversions_per_round: int = 1,
        inversion_steps: int = 50,
        inversion_learning_rate: float = 0.1,
        initial_cost: float = 1e-3,
        min_inversion_success: float = 0.9,
        samples_per_label: int = 5,
        max_mask_fraction: float = 0.15,
        **backdoor: Any,
    ) -> None:
        super().__init__(**backdoor)
        self.counter_share = require_positive("attack.counter_share", counter_share, allow_zero=True)
        if self.counter_share > 1:
            raise AttackError(f"attack.counter_share must be in [0, 1]; got {counter_share}")
        self.inversions_per_round = require_integer("attack.inversions_per_round", inversions_per_round, minimum=1)
        self.samples_per_label = require_integer("attack.samples_per_label", samples_per_label, minimum=1)
        max_mask_fraction = require_positive("attack.max_mask_fraction", max_mask_fraction)
        if max_mask_fraction > 1:
            raise AttackError(f"attack.max_mask_fraction must be in (0, 1]; got {max_mask_fraction}")
        self.max_mask_fraction = max_mask_fraction
        try:
            self.inversion = InversionConfig(
                steps=inversion_steps,
                learning_rate=inversion_learning_rate,
                initial_cost=initial_cost,
                min_success=min_inversion_success,
            )
        except TriggerInversionError as error:
            raise AttackError(f"attack.{error}") from error

    def invert(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator
    ) -> list[InvertedTrigger]:
        """The plausible triggers to ``target_label`` that FLIP's warm-up finds on ``model``.

        ``model`` is left unchanged (the inversion only differentiates with respect to the
        trigger); empty when the client holds no other label or no inversion is plausible.
        """
        if x.ndim != 4:
            raise AttackError(f"{self.name} inverts image triggers and needs inputs (N, C, H, W); got {tuple(x.shape)}")
        triggers = []
        for _ in range(self.inversions_per_round):
            trigger = invert_universal(
                model,
                x,
                y,
                target=self.parameters.target_label,
                generator=generator,
                config=self.inversion,
                samples_per_label=self.samples_per_label,
            )
            if trigger is not None and is_plausible(trigger, max_mask_fraction=self.max_mask_fraction):
                triggers.append(trigger)
        return triggers

    def prepare(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        server_round: int,
        generator: torch.Generator,
    ) -> BatchTransform | None:
        """Backdoor poisoning plus counter-hardening on this round's inverted triggers.

        None in inactive rounds (an honest client); the plain backdoor transform when
        ``counter_share`` is 0 or no inverted trigger is plausible.
        """
        poison = self.training_transform(server_round=server_round)
        if poison is None or self.counter_share == 0:
            return poison
        triggers = self.invert(model, x, y, generator=generator)
        if not triggers:
            return poison
        target_label, share = self.parameters.target_label, self.counter_share

        def transform(
            batch_x: torch.Tensor, batch_y: torch.Tensor, batch_generator: torch.Generator
        ) -> tuple[torch.Tensor, torch.Tensor]:
            poisoned_x, poisoned_y = poison(batch_x, batch_y, batch_generator)
            return counter_hardening_batch(
                poisoned_x,
                poisoned_y,
                triggers=triggers,
                target_label=target_label,
                num_stamped=int(round(share * len(batch_y))),
                generator=batch_generator,
            )

        return transform
