r"""What every backdoor of this package shares: its parameters, batch poisoning, budget and boost.

A backdoor attacker [Bagdasaryan et al., 2020] trains on batches in which ``poison_per_batch``
samples are replaced by trigger-stamped copies labelled ``target_label``
(:func:`poison_with_stamp`), may train with its own SGD budget (``local_steps``,
``learning_rate``), and may boost its update by a factor :math:`\gamma` (model replacement,
Section 3.2, Eq. (3)):

.. math:: \tilde{L} = \gamma (X - G^t) + G^t, \qquad \gamma = n / \eta

with :math:`n` the clients aggregated and :math:`\eta` the server learning rate.
:class:`BoostedBackdoor` implements this once, from one :class:`BackdoorParameters`, for the
image backdoors (:mod:`fedshield.attacks.backdoor`, :mod:`fedshield.attacks.adaptive_flip`)
and the word backdoor (:mod:`fedshield.attacks.text_backdoor`); a subclass only says how a
trigger is stamped.

Bagdasaryan, Veit, Hua, Estrin, Shmatikov. "How To Backdoor Federated Learning." AISTATS 2020.
https://arxiv.org/abs/1807.00459
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedshield.attacks._validation import require_integer, require_positive
from fedshield.attacks.base import Attack, AttackError, Schedule, as_schedule
from fedshield.task.training import BatchTransform, LocalTrainingConfig

Stamp = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BackdoorParameters:
    r"""The parameters every backdoor attack takes, checked once.

    The attack classes take them as flat keyword arguments (the keys of
    ``fedshield/conf/attack/*.yaml``) and build this with :meth:`from_keywords`.

    Attributes
    ----------
    num_malicious : int
        Malicious clients in the federation.
    schedule : Schedule
        Rounds in which the attack is active: ``rounds: [r]`` for single-shot model
        replacement, ``start_round``/``end_round`` for a continuous backdoor. A mapping of its
        fields (as Hydra passes it) or None (every round) is converted.
    target_label : int
        The attacker's target label (FLCert: 0 on MNIST; FLIP: 2; the word backdoor: the
        target word's id).
    poison_per_batch : int
        Samples of each local batch replaced by stamped, relabelled copies (FLIP: 20 of 64);
        a smaller batch is poisoned entirely.
    scale : float or None
        Boost :math:`\gamma` of the trained update in active rounds (1: none). None uses
        Bagdasaryan et al.'s :math:`\gamma = n / \eta` with :math:`n` the number of clients
        sampled in the round and :math:`\eta` = ``server_learning_rate``.
    server_learning_rate : float
        :math:`\eta` for ``scale=None`` (1: the server adds the mean update).
    local_steps, learning_rate : int or None, float or None
        The attacker's own SGD budget per round (Bagdasaryan et al. train the backdoor
        longer); None trains as the honest clients do.

    Raises
    ------
    AttackError
        If a value is out of range; the message names ``attack.<field>``.
    """

    num_malicious: int = 0
    schedule: Schedule = dataclasses.field(default_factory=Schedule)
    target_label: int = 0
    poison_per_batch: int = 20
    scale: float | None = 1.0
    server_learning_rate: float = 1.0
    local_steps: int | None = None
    learning_rate: float | None = None

    def __post_init__(self) -> None:
        checked: dict[str, object] = {
            "num_malicious": require_integer("attack.num_malicious", self.num_malicious, minimum=0),
            "schedule": as_schedule(self.schedule),
            "target_label": require_integer("attack.target_label", self.target_label, minimum=0),
            "poison_per_batch": require_integer("attack.poison_per_batch", self.poison_per_batch, minimum=1),
            "scale": None if self.scale is None else require_positive("attack.scale", self.scale),
            "server_learning_rate": require_positive("attack.server_learning_rate", self.server_learning_rate),
            "local_steps": (
                None if self.local_steps is None else require_integer("attack.local_steps", self.local_steps, minimum=1)
            ),
            "learning_rate": (
                None if self.learning_rate is None else require_positive("attack.learning_rate", self.learning_rate)
            ),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> BackdoorParameters:
        """The parameters from an attack constructor's keyword arguments.

        Raises
        ------
        AttackError
            For a key that is no field (the message lists the fields), or a value out of range.
        """
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(keywords) - set(names))
        if unknown:
            raise AttackError(f"unknown attack parameters {unknown}; a backdoor takes {names} and its own")
        return cls(**keywords)

    def keywords(self) -> dict[str, Any]:
        """The fields by name, to rebuild an attack with the same parameters (a shallow copy)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def poison_with_stamp(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    stamp: Stamp,
    target_label: int,
    num_poisoned: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``min(num_poisoned, len(y))`` samples, chosen with ``generator``, by ``stamp``-ed
    copies labelled ``target_label``; the other samples are returned unchanged.

    The inputs are not modified. The choice is ``torch.randperm(len(y), generator)`` cut to
    the first ``num_poisoned`` positions.
    """
    count = min(require_integer("num_poisoned", num_poisoned, minimum=0), len(y))
    chosen = torch.randperm(len(y), generator=generator)[:count].to(y.device)
    poisoned_x = x.clone()
    poisoned_y = y.clone()
    poisoned_x[chosen] = stamp(x[chosen])
    poisoned_y[chosen] = target_label
    return poisoned_x, poisoned_y


class BoostedBackdoor(Attack):
    """A backdoor attack: poisoned batches, the attacker's SGD budget, and the boost :math:`\\gamma`.

    Subclasses implement :meth:`stamp` (the trigger on test inputs) and may override
    :meth:`training_stamp` (the trigger the client trains with; :meth:`stamp` by default).

    Parameters
    ----------
    parameters : BackdoorParameters
    """

    def __init__(self, parameters: BackdoorParameters) -> None:
        super().__init__(num_malicious=parameters.num_malicious, schedule=parameters.schedule)
        self.parameters = parameters
        self.target_label = parameters.target_label

    def training_stamp(self) -> Stamp:
        """The trigger that poisoned training batches carry; :meth:`stamp` by default."""
        return self.stamp

    def training_config(self, base: LocalTrainingConfig) -> LocalTrainingConfig:
        """``base`` with the attacker's ``local_steps`` / ``learning_rate`` where they are set."""
        changes: dict[str, Any] = {}
        if self.parameters.local_steps is not None:
            changes["local_steps"] = self.parameters.local_steps
        if self.parameters.learning_rate is not None:
            changes["learning_rate"] = self.parameters.learning_rate
        return dataclasses.replace(base, **changes) if changes else base

    def training_transform(self, *, server_round: int) -> BatchTransform | None:
        """:func:`poison_with_stamp` with :meth:`training_stamp` in active rounds, else None."""
        if not self.is_active(server_round):
            return None
        stamp = self.training_stamp()
        target_label, num_poisoned = self.parameters.target_label, self.parameters.poison_per_batch

        def transform(
            x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return poison_with_stamp(
                x, y, stamp=stamp, target_label=target_label, num_poisoned=num_poisoned, generator=generator
            )

        return transform

    def boost(self, *, num_sampled: int) -> float:
        """The factor :math:`\\gamma` applied to the update in an active round."""
        if self.parameters.scale is not None:
            return self.parameters.scale
        require_integer("num_sampled", num_sampled, minimum=1)
        return num_sampled / self.parameters.server_learning_rate

    def post_process(self, update: torch.Tensor, *, server_round: int, num_sampled: int) -> torch.Tensor:
        """Multiply the update by :meth:`boost` in active rounds (model replacement)."""
        if not self.is_active(server_round):
            return update
        factor = self.boost(num_sampled=num_sampled)
        return update if factor == 1.0 else update * factor
