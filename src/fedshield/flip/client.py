"""FLIP on a benign client: invert triggers on the global model, then train on hardened batches.

FLIP [Zhang et al., ICLR 2023, Fig. 1] runs on benign clients only, before their
local training in every round they take part in:

1. **Warm-up** (the client's first ``warmup_rounds`` participations): for each target label,
   invert one universal trigger from a few samples of every other label the client holds; its
   size seeds the client's class-distance cache for every (source, target) pair.
2. **Later participations**: choose ``pairs_per_round`` label pairs from the cache (smallest
   distance first, some random exploration; see :mod:`fedshield.flip.class_distance`) and
   invert each, symmetrically when the client holds enough samples of both labels.
3. **Hardening**: the plausible triggers (converged, mask at most ``max_mask_fraction`` of
   the image) are stamped on copies of training samples that keep their true labels
   (:mod:`fedshield.flip.hardening`).

Warm-up counts the client's own participations, not the server round: the cache lives in the
client's per-job state, and a client first sampled in round 7 has as little knowledge as one
sampled in round 1 (FLIP's code likewise warms up a client the first time it is selected).
The pure steps live in :mod:`~fedshield.flip.inversion`,
:mod:`~fedshield.flip.class_distance` and :mod:`~fedshield.flip.hardening`; this class
holds the configuration and threads the state through them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedshield.flip.class_distance import ClassDistanceCache, choose_pairs
from fedshield.flip.config import FlipConfig, FlipConfigError
from fedshield.flip.hardening import hardening_transform
from fedshield.flip.inversion import (
    InvertedTrigger,
    invert_pair,
    invert_universal,
    is_plausible,
)
from fedshield.task.defense import ClientDefense, ClientState
from fedshield.task.training import BatchTransform

PARTICIPATIONS_KEY = "flip.participations"


class FlipHardening(ClientDefense):
    """FLIP's benign-client hardening [Zhang et al., ICLR 2023] behind the ClientDefense hook.

    Holds a :class:`~fedshield.flip.config.FlipConfig` and threads the client's per-job state
    (participations, class-distance cache) through the pure steps.
    """

    def __init__(self, config: FlipConfig) -> None:
        self.config = config

    def invert(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        cache: ClassDistanceCache,
        warmup: bool,
        generator: torch.Generator,
    ) -> list[InvertedTrigger]:
        """This participation's triggers; ``cache`` is updated in place with their sizes."""
        held = sorted(int(label) for label in torch.unique(y).tolist())
        triggers: list[InvertedTrigger] = []
        if warmup:
            # The least-measured target labels first, so that a budgeted warm-up rotates.
            column_visits = cache.visits.sum(axis=0)
            targets = sorted(range(self.config.num_classes), key=lambda label: (column_visits[label], label))
            targets = targets[: self.config.universal_targets_per_round]
            for target in targets:
                trigger = invert_universal(
                    model,
                    x,
                    y,
                    target=target,
                    generator=generator,
                    config=self.config.inversion,
                    samples_per_label=self.config.universal_samples_per_label,
                )
                if trigger is not None:
                    triggers.append(trigger)
        else:
            pairs = choose_pairs(
                cache,
                num_pairs=self.config.pairs_per_round,
                exploration=self.config.exploration,
                generator=generator,
                source_labels=held,
            )
            for source, target in pairs:
                triggers += invert_pair(
                    model,
                    x,
                    y,
                    source=source,
                    target=target,
                    generator=generator,
                    config=self.config.inversion,
                    symmetric_min_samples=self.config.symmetric_min_samples,
                    samples_per_label=self.config.samples_per_label,
                )
        for trigger in triggers:
            cache.update(trigger)
        return triggers

    def prepare(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        server_round: int,
        state: ClientState,
        generator: torch.Generator,
    ) -> tuple[BatchTransform | None, ClientState]:
        """Invert, update the class-distance cache, and return the hardening transform.

        Returns ``(None, new_state)`` when no trigger is plausible or hardening is switched
        off. ``state`` and ``model`` are not modified; the result depends only on the inputs
        and ``generator``'s state.
        """
        if server_round < 1:
            raise FlipConfigError(f"server_round must be >= 1; got {server_round}")
        if x.ndim != 4:
            raise FlipConfigError(f"FLIP inverts image triggers and needs inputs (N, C, H, W); got {tuple(x.shape)}")
        if len(y) == 0:
            raise FlipConfigError("FLIP needs a client with at least one sample; got none")
        if server_round < self.config.start_round:
            return None, dict(state)
        if int(y.min()) < 0 or int(y.max()) >= self.config.num_classes:
            raise FlipConfigError(
                f"labels must lie in [0, {self.config.num_classes}); got [{int(y.min())}, {int(y.max())}]"
            )
        participations = int(np.sum(state.get(PARTICIPATIONS_KEY, 0)))
        cache = ClassDistanceCache.from_state(state, self.config.num_classes)
        triggers = self.invert(
            model,
            x,
            y,
            cache=cache,
            warmup=participations < self.config.warmup_rounds,
            generator=generator,
        )
        plausible = [
            trigger for trigger in triggers if is_plausible(trigger, max_mask_fraction=self.config.max_mask_fraction)
        ]
        transform = None
        if self.config.adversarial_training and plausible:
            transform = hardening_transform(plausible, stamped_share=self.config.stamped_share)
        new_state = {key: np.array(value, copy=True) for key, value in state.items()}
        new_state.update(cache.to_state())
        new_state[PARTICIPATIONS_KEY] = np.array([participations + 1], dtype=np.int64)
        return transform, new_state
