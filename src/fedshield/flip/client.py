"""FLIP on a benign client: invert triggers on the current local model while training on them.

FLIP [Zhang et al., ICLR 2023, Fig. 1 and its official code] runs on benign clients only, in
every round they take part in:

1. **Plan** the round's inversions. In a warm-up participation (the client's first
   ``warmup_rounds``, and every ``rewarmup_every``-th after that, so that a backdoor that
   appears after a client's first participation is seen), one *universal* trigger per target
   label, from a few samples of every other label the client holds; otherwise
   ``pairs_per_round`` label pairs from the class-distance cache (smallest distance first, some
   random exploration; :mod:`fedshield.flip.class_distance`), each inverted both ways when the
   client holds enough samples of both labels (:func:`~fedshield.flip.inversion.pair_directions`).
2. **Invert** them on the global model before the first batch, and again on the *current local
   model* every ``reinvert_every`` batches, so the triggers follow the model as hardening moves
   it; a round's directions run together in one batched Adam loop
   (:func:`~fedshield.flip.inversion.invert_batch`). Every inversion is warm-started from the
   client's cached mask and pattern for that direction when it has one
   (``warm_inversion_steps``), else runs a fresh inversion (``inversion_steps``); the cache
   lives in the client's per-job state, so a later participation starts from what the client
   found before (FLIP's code keeps ``mask_dict``). Only plausible triggers are cached: a large
   mask found before the backdoor existed would trap the next inversion of that direction
   next to it.
3. **Harden**: every batch gets stamped copies of its samples that keep their true labels,
   stamped with the plausible triggers of the latest inversion (:mod:`fedshield.flip.hardening`).

Participations count the client's own rounds, not the server's: a client first sampled in round
40 knows as little as one sampled in round 1 (FLIP's code warms a client up the first time it is
selected). The defense never sees the attack: it works from the model and the client's data
only (the trigger-recovery diagnostic is computed outside it, in :mod:`fedshield.client.work`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedshield.flip.class_distance import ClassDistanceCache, choose_pairs
from fedshield.flip.config import FlipConfig, FlipConfigError
from fedshield.flip.hardening import hardening_transform
from fedshield.flip.inversion import (
    InversionProblem,
    InvertedTrigger,
    direction_problem,
    invert_batch,
    invert_problem,
    is_plausible,
    pair_directions,
)
from fedshield.task.defense import ClientDefense, ClientState, DefenseRound
from fedshield.task.training import BatchTransform

PARTICIPATIONS_KEY = "flip.participations"
_MASK_PREFIX = "flip.mask."
_PATTERN_PREFIX = "flip.pattern."
_MEMORY_PREFIX = "flip.memory."  # + "<key>.mask" / ".pattern" / ".labels" (target, sources...) / ".age"


@dataclass(frozen=True)
class Direction:
    """One inversion of a round: samples of ``source_labels`` flipped to ``target``.

    ``key`` names the cached trigger it warm-starts from: ``"u.<target>"`` for a universal
    trigger, ``"<source>.<target>"`` for a pair direction.
    """

    source_labels: tuple[int, ...]
    target: int
    universal: bool = False

    @property
    def key(self) -> str:
        return f"u.{self.target}" if self.universal else f"{self.source_labels[0]}.{self.target}"


def plan_problem(
    config: FlipConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    direction: Direction,
    *,
    stored: dict[str, tuple[torch.Tensor, torch.Tensor]],
    generator: torch.Generator,
) -> InversionProblem:
    """The inversion of ``direction``: warm-started from its cached trigger in ``stored`` with
    ``warm_inversion_steps`` when there is one (and ``warm_start`` is on), else fresh with
    ``inversion_steps``; its samples (and a fresh start) are drawn from ``generator``."""
    per_label = config.universal_samples_per_label if direction.universal else config.samples_per_label
    warm = stored.get(direction.key) if config.warm_start else None
    inversion = config.inversion
    if warm is not None:
        inversion = dataclasses.replace(inversion, steps=config.warm_inversion_steps)
    return direction_problem(
        x,
        y,
        source_labels=direction.source_labels,
        target=direction.target,
        samples_per_label=per_label,
        generator=generator,
        config=inversion,
        initial_mask=None if warm is None else warm[0],
        initial_pattern=None if warm is None else warm[1],
    )


def stored_triggers(state: ClientState) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The client's cached ``(mask, pattern)`` per direction key, from its state."""
    stored = {}
    for name, mask in state.items():
        key = name.removeprefix(_MASK_PREFIX)
        if key != name and _PATTERN_PREFIX + key in state:
            pattern = state[_PATTERN_PREFIX + key]
            stored[key] = (torch.from_numpy(np.array(mask, copy=True)), torch.from_numpy(np.array(pattern, copy=True)))
    return stored


def remembered_triggers(state: ClientState) -> dict[str, tuple[InvertedTrigger, int]]:
    """The client's remembered plausible triggers per direction key, with their age in
    participations since an inversion last found them."""
    remembered = {}
    for name in state:
        if name.startswith(_MEMORY_PREFIX) and name.endswith(".age"):
            key = name.removeprefix(_MEMORY_PREFIX).removesuffix(".age")
            labels = [int(label) for label in np.asarray(state[f"{_MEMORY_PREFIX}{key}.labels"]).tolist()]
            mask = torch.from_numpy(np.array(state[f"{_MEMORY_PREFIX}{key}.mask"], copy=True))
            trigger = InvertedTrigger(
                mask=mask,
                pattern=torch.from_numpy(np.array(state[f"{_MEMORY_PREFIX}{key}.pattern"], copy=True)),
                mask_l1=float(mask.abs().sum()),
                attack_success=float("nan"),  # measured on an earlier model
                target_label=labels[0],
                source_labels=tuple(labels[1:]),
                converged=True,
            )
            remembered[key] = (trigger, int(np.sum(state[name])))
    return remembered


class FlipRound(DefenseRound):
    """One benign client's FLIP round: the plan, the latest triggers, the updated caches."""

    def __init__(
        self,
        config: FlipConfig,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        server_round: int,
        state: ClientState,
        generator: torch.Generator,
    ) -> None:
        self.config = config
        self.model = model
        self.x, self.y = x, y
        self._state_in = state
        self.active = server_round >= config.start_round
        self._transform: BatchTransform | None = None
        self.inversions = 0
        self.triggers: list[InvertedTrigger] = []
        self._plausible: list[InvertedTrigger] = []
        # Every plausible trigger the round stamped with, in adoption order: the latest set
        # alone would hide a trigger found on the received model and gone after hardening.
        self._hardened_with: list[InvertedTrigger] = []
        self._stamp: BatchTransform | None = None
        if not self.active:
            return
        self.participations = int(np.sum(state.get(PARTICIPATIONS_KEY, 0)))
        self.cache = ClassDistanceCache.from_state(state, config.num_classes)
        self.stored = stored_triggers(state)
        self.memory = remembered_triggers(state)
        self._found: dict[str, InvertedTrigger] = {}  # plausible triggers found this round, by key
        self.plan = self._plan(generator)
        self._use(self._invert_plan(generator, rerun=False))
        self.batches_seen = 0
        if config.adversarial_training:
            self._transform = self._harden

    # ------------------------------------------------------------------ plan and inversion

    @property
    def warmup(self) -> bool:
        every = self.config.rewarmup_every
        first = self.participations < self.config.warmup_rounds
        return first or (every is not None and self.participations > 0 and self.participations % every == 0)

    def _plan(self, generator: torch.Generator) -> list[Direction]:
        held = sorted(int(label) for label in torch.unique(self.y).tolist())
        if self.warmup:
            # The least-measured target labels first, so that a budgeted warm-up rotates.
            column_visits = self.cache.visits.sum(axis=0)
            targets = sorted(range(self.config.num_classes), key=lambda label: (column_visits[label], label))
            targets = targets[: self.config.universal_targets_per_round]
            plan = []
            for target in targets:
                sources = tuple(label for label in held if label != target)
                if sources:
                    plan.append(Direction(sources, target, universal=True))
            return plan
        pairs = choose_pairs(
            self.cache,
            num_pairs=self.config.pairs_per_round,
            exploration=self.config.exploration,
            generator=generator,
            source_labels=held,
        )
        return [
            Direction((from_label,), to_label)
            for source, target in pairs
            for from_label, to_label in pair_directions(
                self.y, source, target, symmetric_min_samples=self.config.symmetric_min_samples
            )
        ]

    def _adopt(self, direction: Direction, trigger: InvertedTrigger) -> None:
        """Record a finished inversion in the class-distance cache and the warm-start cache."""
        self.inversions += 1
        self.cache.update(trigger)
        # Only a plausible trigger is a start worth keeping: warm-starting from a large mask
        # found before the backdoor existed would trap the next inversion next to it.
        if is_plausible(trigger, max_mask_fraction=self.config.max_mask_fraction):
            self.stored[direction.key] = (trigger.mask, trigger.pattern)
            self._found[direction.key] = trigger
        else:
            self.stored.pop(direction.key, None)

    def _invert_plan(self, generator: torch.Generator, *, rerun: bool) -> list[InvertedTrigger]:
        """Invert every planned direction; a re-run (during training) re-inverts only the
        directions with a cached trigger to warm-start from, and keeps the others' last result.

        The directions run together in one :func:`~fedshield.flip.inversion.invert_batch`
        (one forward pass per Adam step for all of them; bench/bench_flip_batched.py measures
        the gain). A batch is the same as inverting the directions one after the other in plan
        order with :func:`~fedshield.flip.inversion.invert_direction`, within the float
        tolerance stated in ``invert_batch``: the random draws (samples, fresh starts) are made
        in plan order, and a direction whose key repeats one already in the batch, so that it
        warm-starts from that one's result, starts a new batch.
        """
        results: list[InvertedTrigger | None] = list(self.triggers) if rerun else [None] * len(self.plan)
        batch: list[tuple[int, Direction, InversionProblem]] = []

        def run_batch() -> None:
            problems = [problem for _, _, problem in batch]
            if self.config.batched_inversion:
                triggers = invert_batch(self.model, problems)
            else:  # the one-by-one reference
                triggers = [invert_problem(self.model, problem) for problem in problems]
            for (position, direction, _), trigger in zip(batch, triggers, strict=True):
                self._adopt(direction, trigger)
                results[position] = trigger
            batch.clear()

        for position, direction in enumerate(self.plan):
            if any(direction.key == queued.key for _, queued, _ in batch):
                run_batch()
            if rerun and direction.key not in self.stored:
                continue
            problem = plan_problem(self.config, self.x, self.y, direction, stored=self.stored, generator=generator)
            batch.append((position, direction, problem))
        run_batch()
        return [trigger for trigger in results if trigger is not None]

    # ------------------------------------------------------------------ hardening

    def _use(self, triggers: list[InvertedTrigger]) -> None:
        """Adopt the latest triggers; their plausible subset and its stamping transform are
        derived once here, not at every batch."""
        self.triggers = triggers
        self._plausible = [t for t in triggers if is_plausible(t, max_mask_fraction=self.config.max_mask_fraction)]
        stamped = self._plausible + self._remembered()
        self._hardened_with.extend(t for t in stamped if not any(t is seen for seen in self._hardened_with))
        self._stamp = hardening_transform(stamped, stamped_share=self.config.stamped_share) if stamped else None

    def _remembered(self) -> list[InvertedTrigger]:
        """Remembered triggers still young enough whose direction this round has not re-found."""
        keep = self.config.remember_participations
        return [trigger for key, (trigger, age) in sorted(self.memory.items()) if age < keep and key not in self._found]

    def _harden(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        every = self.config.reinvert_every
        if every > 0 and self.batches_seen > 0 and self.batches_seen % every == 0:
            self._use(self._invert_plan(generator, rerun=True))  # on the current local model
        self.batches_seen += 1
        return (x, y) if self._stamp is None else self._stamp(x, y, generator)

    # ------------------------------------------------------------------ DefenseRound

    @property
    def transform(self) -> BatchTransform | None:
        return self._transform

    def new_state(self) -> ClientState:
        state = {key: np.array(value, copy=True) for key, value in self._state_in.items()}
        if not self.active:
            return state
        state.update(self.cache.to_state())
        for key, (mask, pattern) in self.stored.items():
            state[_MASK_PREFIX + key] = mask.numpy().astype(np.float32)
            state[_PATTERN_PREFIX + key] = pattern.numpy().astype(np.float32)
        state[PARTICIPATIONS_KEY] = np.array([self.participations + 1], dtype=np.int64)
        if self.config.remember_participations > 0:
            self._remember(state)
        return state

    def _remember(self, state: ClientState) -> None:
        """Triggers found this round start at age 0, the others age by one participation and
        are forgotten after ``remember_participations``."""
        aged = {key: (trigger, age + 1) for key, (trigger, age) in self.memory.items()}
        aged.update({key: (trigger, 0) for key, trigger in self._found.items()})
        for name in [name for name in state if name.startswith(_MEMORY_PREFIX)]:
            del state[name]
        for key, (trigger, age) in aged.items():
            if age >= self.config.remember_participations:
                continue
            state[f"{_MEMORY_PREFIX}{key}.mask"] = trigger.mask.numpy().astype(np.float32)
            state[f"{_MEMORY_PREFIX}{key}.pattern"] = trigger.pattern.numpy().astype(np.float32)
            state[f"{_MEMORY_PREFIX}{key}.labels"] = np.array([trigger.target_label, *trigger.source_labels])
            state[f"{_MEMORY_PREFIX}{key}.age"] = np.array([age], dtype=np.int64)

    def diagnostics(self) -> dict[str, float]:
        if not self.active:
            return {}
        used, final = self._hardened_with, self._plausible
        return {
            "flip_inversions": float(self.inversions),
            "flip_triggers": float(len(used)),  # plausible triggers adopted at any point of the round
            "flip_triggers_at_end": float(len(final)),  # those still plausible on the final local model
            "flip_mask_l1": float(np.mean([t.mask_l1 for t in used])) if used else float("nan"),
        }

    def found_masks(self) -> list[tuple[int, torch.Tensor]]:
        """The masks of every plausible trigger the round hardened with."""
        return [(t.target_label, t.mask[0]) for t in self._hardened_with]


class FlipHardening(ClientDefense):
    """FLIP's benign-client side [Zhang et al., ICLR 2023] behind the ClientDefense hook."""

    def __init__(self, config: FlipConfig) -> None:
        self.config = config

    def start(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        server_round: int,
        state: ClientState,
        generator: torch.Generator,
    ) -> FlipRound:
        """Plan and run this round's first inversions on ``model`` (the global model).

        ``state`` is not modified; the round's transform keeps ``model`` and re-inverts on it as
        local training changes it. Before ``start_round`` the round does nothing (no transform,
        state unchanged, no random draw).
        """
        if server_round < 1:
            raise FlipConfigError(f"server_round must be >= 1; got {server_round}")
        if x.ndim != 4:
            raise FlipConfigError(f"FLIP inverts image triggers and needs inputs (N, C, H, W); got {tuple(x.shape)}")
        if len(y) == 0:
            raise FlipConfigError("FLIP needs a client with at least one sample; got none")
        if server_round >= self.config.start_round and (int(y.min()) < 0 or int(y.max()) >= self.config.num_classes):
            raise FlipConfigError(
                f"labels must lie in [0, {self.config.num_classes}); got [{int(y.min())}, {int(y.max())}]"
            )
        return FlipRound(self.config, model, x, y, server_round=server_round, state=state, generator=generator)
