r"""Label flipping: a malicious client trains on labels :math:`y \mapsto C - 1 - y`.

A data-poisoning baseline (e.g. Fang et al., USENIX Security 2020, Section 5; Tolpegin et al.,
"Data Poisoning Attacks Against Federated Learning Systems", ESORICS 2020) with :math:`C` the
number of classes: every label of every local batch is replaced.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedshield.attacks._validation import require_integer
from fedshield.attacks.base import Attack, AttackError, Schedule
from fedshield.task.training import BatchTransform


def flip_labels(labels: torch.Tensor, *, num_classes: int) -> torch.Tensor:
    """Return ``num_classes - 1 - labels`` (a new tensor).

    Raises
    ------
    AttackError
        If a label lies outside ``[0, num_classes)``.
    """
    require_integer("num_classes", num_classes, minimum=2)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise AttackError(
            f"labels must lie in [0, num_classes={num_classes}); got [{int(labels.min())}, {int(labels.max())}]"
        )
    return num_classes - 1 - labels


class LabelFlipAttack(Attack):
    """Train on flipped labels in the active rounds; see :func:`flip_labels`.

    Parameters
    ----------
    num_malicious : int
        Malicious clients in the federation.
    schedule : Schedule or mapping
        Rounds in which the attack is active.
    num_classes : int
        Number of labels :math:`C \\ge 2` of the dataset.
    """

    name = "label_flip"

    def __init__(
        self,
        *,
        num_malicious: int = 0,
        schedule: Schedule | Mapping[str, object] | None = None,
        num_classes: int = 10,
    ) -> None:
        super().__init__(num_malicious=num_malicious, schedule=schedule)
        self.num_classes = require_integer("attack.num_classes", num_classes, minimum=2)

    def training_transform(self, *, server_round: int) -> BatchTransform | None:
        if not self.is_active(server_round):
            return None
        num_classes = self.num_classes

        def transform(
            x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return x, flip_labels(y, num_classes=num_classes)

        return transform
