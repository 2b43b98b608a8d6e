"""The interface every poisoning attack implements, and when it is active.

A malicious client runs the same Flower ClientApp as an honest one; its behaviour differs in
three hooks, each a pure function of its inputs:

1. ``training_transform`` poisons the batches of its local training (backdoor, label flip);
   ``prepare`` returns it, and may look at the global model and the client's data first
   (:class:`~fedshield.attacks.adaptive_flip.AdaptiveFlipBackdoor` inverts FLIP's triggers);
2. ``post_process`` rewrites the update it trained (model replacement / scaling);
3. ``craft`` builds a model-poisoning update from what Fang et al. assume a full-knowledge
   attacker knows: the honest-training updates of every client sampled in the job's round.

The knowledge channel of (3) is explicit: when ``needs_benign_updates`` is true, the server
(playing the colluding adversary's courier in this simulation) sends the round's phase-1
updates to the sampled malicious clients in a second, ``train.craft`` message, and aggregates
their crafted replies instead of their phase-1 ones. Honest clients never see that message.

Before using the hooks, a malicious client calls ``for_client(user_id, malicious_ids)`` once:
it returns the attack as that client runs it (the attack itself, except for DBA, whose clients
each train with their own part of the trigger). The hooks of the shipped attacks check the
schedule themselves and act as an honest client in inactive rounds.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedshield.task.training import BatchTransform, LocalTrainingConfig


class AttackError(ValueError):
    """An attack's parameters or inputs are out of range; the message names the field."""


@dataclass(frozen=True)
class Schedule:
    """Rounds in which an attack is active (rounds count from 1).

    ``rounds`` given: single-shot (only those rounds). Otherwise continuous, from
    ``start_round`` to ``end_round`` inclusive (None: to the end).

    ``rounds`` may be any sequence of positive integers (Hydra passes a list); it is stored as
    a sorted tuple without repeats.
    """

    start_round: int = 1
    end_round: int | None = None
    rounds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.start_round < 1:
            raise AttackError(f"attack.schedule.start_round must be >= 1; got {self.start_round}")
        if self.end_round is not None and self.end_round < self.start_round:
            raise AttackError(
                f"attack.schedule.end_round must be >= start_round={self.start_round} or null; got {self.end_round}"
            )
        if self.rounds is not None:
            rounds = tuple(sorted({int(r) for r in self.rounds}))
            if not rounds or rounds[0] < 1:
                raise AttackError(
                    f"attack.schedule.rounds must be a non-empty list of rounds >= 1 or null; got {list(self.rounds)}"
                )
            object.__setattr__(self, "rounds", rounds)

    def is_active(self, server_round: int) -> bool:
        if self.rounds is not None:
            return server_round in self.rounds
        return server_round >= self.start_round and (self.end_round is None or server_round <= self.end_round)


def as_schedule(schedule: Schedule | Mapping[str, object] | None) -> Schedule:
    """A :class:`Schedule` from itself, a mapping of its fields (Hydra's dict), or None.

    None gives the default: active in every round.
    """
    if schedule is None:
        return Schedule()
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, Mapping):
        unknown = set(schedule) - {"start_round", "end_round", "rounds"}
        if unknown:
            raise AttackError(
                "attack.schedule takes the keys start_round, end_round, rounds; "
                f"got unknown keys {sorted(map(str, unknown))}"
            )
        # Values as Hydra passes them; Schedule checks each.
        fields: dict[str, Any] = {str(key): value for key, value in schedule.items()}
        return Schedule(**fields)
    raise AttackError(f"attack.schedule must be a Schedule, a mapping or null; got {type(schedule).__name__}")


@dataclass(frozen=True)
class CraftContext:
    """What a full-knowledge attacker sees in one round of one FL job.

    Attributes
    ----------
    server_round : int
    own_id : int
        User ID of the malicious client crafting its reply.
    malicious_ids : tuple[int, ...]
        Sorted user IDs of the malicious clients sampled in this round of this job.
    sampled_ids : tuple[int, ...]
        Sorted user IDs of every sampled client (honest and malicious).
    updates : torch.Tensor
        (len(sampled_ids), num_params) phase-1 updates, row i from ``sampled_ids[i]``; a
        malicious client's row is the update it would have sent had it been honest.
    weights : torch.Tensor
        (len(sampled_ids),) sample counts, as the aggregation rule will weight them.
    global_params : torch.Tensor
        The job's current global parameter vector.
    generator : torch.Generator
        Seeded by (job seed, round) only, so that colluding clients draw the same noise.
    """

    server_round: int
    own_id: int
    malicious_ids: tuple[int, ...]
    sampled_ids: tuple[int, ...]
    updates: torch.Tensor
    weights: torch.Tensor
    global_params: torch.Tensor
    generator: torch.Generator

    @property
    def malicious_rows(self) -> torch.Tensor:
        index = [self.sampled_ids.index(uid) for uid in self.malicious_ids]
        return self.updates[index]

    @property
    def benign_rows(self) -> torch.Tensor:
        malicious = set(self.malicious_ids)
        return self.updates[[i for i, uid in enumerate(self.sampled_ids) if uid not in malicious]]

    @property
    def benign_weights(self) -> torch.Tensor:
        malicious = set(self.malicious_ids)
        return self.weights[[i for i, uid in enumerate(self.sampled_ids) if uid not in malicious]]

    @property
    def malicious_weights(self) -> torch.Tensor:
        index = [self.sampled_ids.index(uid) for uid in self.malicious_ids]
        return self.weights[index]

    @property
    def own_rank(self) -> int:
        return self.malicious_ids.index(self.own_id)


class Attack(ABC):  # noqa: B024 - an honest client unless a hook is overridden
    """Base class: an honest client unless a hook is overridden.

    ``schedule`` may also be a mapping of :class:`Schedule`'s fields (as Hydra passes it).
    """

    name: str = "attack"
    needs_benign_updates: bool = False

    def __init__(
        self,
        *,
        num_malicious: int = 0,
        schedule: Schedule | Mapping[str, object] | None = None,
    ) -> None:
        integer = isinstance(num_malicious, int) and not isinstance(num_malicious, bool)
        if not integer or num_malicious < 0:
            raise AttackError(f"attack.num_malicious must be an integer >= 0; got {num_malicious!r}")
        self.num_malicious = num_malicious
        self.schedule = as_schedule(schedule)

    def is_active(self, server_round: int) -> bool:
        return self.num_malicious > 0 and self.schedule.is_active(server_round)

    def check_precondition(self, *, num_sampled: int, num_attackers: int) -> None:  # noqa: B027 - optional hook
        """Raise :class:`AttackError` if the attack cannot run on a round of ``num_sampled``
        clients of which ``num_attackers`` are malicious; every round qualifies by default.

        Called when the run is built with the most attackers a job's sample can hold.
        """

    def training_config(self, base: LocalTrainingConfig) -> LocalTrainingConfig:
        """The SGD budget a malicious client trains with: the honest ``base`` by default.

        :class:`~fedshield.attacks.boosted.BoostedBackdoor` applies the attacker's own
        ``local_steps`` / ``learning_rate``.
        """
        return base

    def training_transform(self, *, server_round: int) -> BatchTransform | None:
        """Batch poisoning for local training; None trains on clean batches."""
        return None

    def prepare(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        server_round: int,
        generator: torch.Generator,
    ) -> BatchTransform | None:
        """The batch transform of this round's local training, chosen with the global ``model``
        and the client's data ``x``, ``y`` in hand; :meth:`training_transform` by default.

        Called once per active round before local training, with the generator that then
        drives it. Must not change ``model``'s parameters.
        """
        return self.training_transform(server_round=server_round)

    def for_client(self, user_id: int, malicious_ids: Collection[int]) -> Attack:
        """The attack as run by malicious client ``user_id``; the attack itself by default.

        ``malicious_ids`` are *all* the malicious clients of the federation (not only those
        sampled in a round). Attacks whose clients play different roles override this:
        :class:`~fedshield.attacks.backdoor.DistributedBackdoorAttack` gives each client its
        part of the trigger. Call it once per client; the server keeps the original object
        (whose :meth:`stamp` applies the full trigger).
        """
        return self

    def post_process(self, update: torch.Tensor, *, server_round: int, num_sampled: int) -> torch.Tensor:
        """Rewrite the trained update (e.g. scale it); identity by default."""
        return update

    def craft(self, context: CraftContext) -> torch.Tensor:
        """Full-knowledge model poisoning: the update ``context.own_id`` sends."""
        raise NotImplementedError(f"{self.name} does not craft updates")

    # Backdoor attacks override these so the server can measure attack success.
    target_label: int | None = None
    # Image backdoors leave inputs of the target label out of the success rate; the word
    # backdoor counts every trigger sentence.
    success_rate_excludes_target: bool = True

    def trigger_region(self, height: int, width: int) -> torch.Tensor | None:
        """Boolean ``(height, width)`` pixels the trigger writes (pixel backdoors), else None.

        For diagnostics only (how much of an inverted trigger lies on the real one); no
        defense ever receives it.
        """
        return None

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the attack's trigger to test inputs (backdoor attacks only)."""
        raise NotImplementedError(f"{self.name} has no trigger")


class CraftingAttack(Attack):
    """A model-poisoning attack that crafts all colluders' updates from a :class:`CraftContext`.

    Subclasses implement :meth:`craft_all`, the ``(len(context.malicious_ids), num_params)``
    matrix of crafted updates; :meth:`craft` returns the row of ``context.own_rank``. Every
    colluder computes the same matrix (its randomness comes from ``context.generator``, seeded
    by job and round only), so together they send exactly that matrix.
    """

    needs_benign_updates = True

    def craft_all(self, context: CraftContext) -> torch.Tensor:
        """The crafted updates of all malicious clients sampled in the round, in rank order."""
        raise NotImplementedError(f"{self.name} does not craft updates")

    def craft(self, context: CraftContext) -> torch.Tensor:
        """Row ``context.own_rank`` of :meth:`craft_all`."""
        return self.craft_all(context)[context.own_rank]
