r"""Backdoor attacks: a pixel-pattern trigger, model replacement, and the distributed backdoor.

* :class:`PixelPatternTrigger`: the BadNets pattern backdoor, a small fixed pattern of pixels
  set to a constant in one corner of the image [Gu et al., 2017].
* :class:`BackdoorAttack`: a malicious client replaces ``poison_per_batch`` samples of each local
  batch by trigger-stamped copies labelled ``target_label`` and may boost its update by a
  factor :math:`\gamma` (model replacement [Bagdasaryan et al., 2020, Section 3.2, Eq. (3)]:
  :math:`\tilde{L} = \gamma (X - G^t) + G^t` with :math:`\gamma = n / \eta`, :math:`n` the
  clients aggregated and :math:`\eta` the server learning rate). With a single-shot
  :class:`~fedshield.attacks.base.Schedule` and a large :math:`\gamma` this is Bagdasaryan et
  al.'s model replacement; with a continuous schedule and :math:`\gamma = 1`, the continuous
  backdoor of FLCert's and FLIP's evaluations.
* :class:`DistributedBackdoorAttack`: the global trigger is split into :math:`K` local
  triggers; the malicious client of rank :math:`r` among *all* malicious clients trains with
  local trigger :math:`r \bmod K`, while the attack is evaluated with the global trigger
  [Xie et al., 2020, Section 2].

The parameters, batch poisoning, SGD budget and boost are :mod:`fedshield.attacks.boosted`'s,
shared with the word backdoor. The attack success rate is
:func:`fedshield.task.metrics.attack_success_rate` (also exported by :mod:`fedshield.attacks`).

Gu, Dolan-Gavitt, Garg. "BadNets: Identifying Vulnerabilities in the Machine Learning Model
Supply Chain." 2017. https://arxiv.org/abs/1708.06733

Bagdasaryan, Veit, Hua, Estrin, Shmatikov. "How To Backdoor Federated Learning." AISTATS 2020.
https://arxiv.org/abs/1807.00459

Xie, Huang, Chen, Li. "DBA: Distributed Backdoor Attacks against Federated Learning." ICLR
2020. https://openreview.net/forum?id=rkgyS0VFvr
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedshield.attacks._validation import require_integer
from fedshield.attacks.base import AttackError
from fedshield.attacks.boosted import BackdoorParameters, BoostedBackdoor, Stamp, poison_with_stamp

NAMED_PATTERNS = ("checker", "square", "plus")
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def named_pattern(name: str, *, size: int) -> np.ndarray:
    """A ``(size, size)`` boolean pattern.

    ``"checker"``: pixels with even ``row + column`` (for size 3 the BadNets-style "X" of the
    four corners and the centre); ``"square"``: every pixel; ``"plus"``: the middle row and
    column.
    """
    if name not in NAMED_PATTERNS:
        raise AttackError(f"trigger.pattern must be one of {NAMED_PATTERNS}; got {name!r}")
    require_integer("trigger.size", size, minimum=1)
    rows, columns = np.indices((size, size))
    if name == "checker":
        return (rows + columns) % 2 == 0
    if name == "square":
        return np.ones((size, size), dtype=bool)
    return (rows == size // 2) | (columns == size // 2)


class PixelPatternTrigger:
    """A BadNets pixel pattern placed in a corner of the image [Gu et al., 2017].

    Parameters
    ----------
    pattern : str or sequence of sequences of 0/1
        A name from :data:`NAMED_PATTERNS` or an explicit 2-D 0/1 mask (1: pixel of the
        trigger), e.g. ``[[1, 0, 1], [0, 1, 0], [1, 0, 1]]``.
    size : int
        Side length of a named pattern (ignored for an explicit mask).
    corner : {"top_left", "top_right", "bottom_left", "bottom_right"}
        Where the pattern's bounding box is placed.
    margin : int
        Distance in pixels between the bounding box and the image's edges at that corner.
    offset : (int, int) or None
        Explicit ``(row, column)`` of the bounding box's top-left pixel, for a trigger anywhere
        in the image; ``corner`` and ``margin`` are then ignored.
    value : float
        Value written to the trigger's pixels in every channel (1.0: white for images in
        [0, 1]).
    """

    def __init__(
        self,
        *,
        pattern: str | Sequence[Sequence[int]] = "checker",
        size: int = 3,
        corner: str = "bottom_right",
        margin: int = 1,
        value: float = 1.0,
        offset: Sequence[int] | None = None,
    ) -> None:
        if isinstance(pattern, str):
            mask = named_pattern(pattern, size=size)
        else:
            mask = np.asarray([[int(entry) for entry in row] for row in pattern])
            if mask.ndim != 2 or mask.size == 0 or not np.isin(mask, (0, 1)).all():
                raise AttackError(
                    f"trigger.pattern must be a pattern name or a non-empty 2-D 0/1 mask; got {pattern!r}"
                )
            mask = mask.astype(bool)
        if not mask.any():
            raise AttackError("trigger.pattern must set at least one pixel")
        if corner not in CORNERS:
            raise AttackError(f"trigger.corner must be one of {CORNERS}; got {corner!r}")
        self.pattern = pattern if isinstance(pattern, str) else mask.astype(int).tolist()
        self.size = size
        self.corner = corner
        self.margin = require_integer("trigger.margin", margin, minimum=0)
        self.value = float(value)
        self._pattern_mask = mask
        self.offset: tuple[int, int] | None = None
        if offset is not None:
            if len(offset) != 2:
                raise AttackError(f"trigger.offset must be [row, column] or null; got {offset!r}")
            row, column = (require_integer(f"trigger.offset[{i}]", v, minimum=0) for i, v in enumerate(offset))
            self.offset = (row, column)

    @property
    def pattern_mask(self) -> np.ndarray:
        """The pattern's boolean bounding box, shape ``(rows, columns)`` (a copy)."""
        return self._pattern_mask.copy()

    @property
    def num_pixels(self) -> int:
        """Number of pixel positions the trigger sets."""
        return int(self._pattern_mask.sum())

    def mask(self, height: int, width: int) -> torch.Tensor:
        """Boolean ``(height, width)`` mask of the trigger's pixels in an image of that size.

        Raises
        ------
        AttackError
            If the pattern plus margin does not fit in the image.
        """
        rows, columns = self._pattern_mask.shape
        if self.offset is not None:
            top, left = self.offset
            if top + rows > height or left + columns > width:
                raise AttackError(
                    f"trigger of {rows}x{columns} pixels at offset {list(self.offset)} does not fit "
                    f"an image of {height}x{width}"
                )
        else:
            if rows + self.margin > height or columns + self.margin > width:
                raise AttackError(
                    f"trigger of {rows}x{columns} pixels with margin {self.margin} does not fit "
                    f"an image of {height}x{width}"
                )
            top = self.margin if self.corner.startswith("top") else height - self.margin - rows
            left = self.margin if self.corner.endswith("left") else width - self.margin - columns
        full = torch.zeros((height, width), dtype=torch.bool)
        full[top : top + rows, left : left + columns] = torch.from_numpy(self._pattern_mask)
        return full

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of images ``x`` (..., H, W), e.g. (N, C, H, W), with the trigger applied.

        Every channel of every trigger pixel is set to ``value``; all other entries are kept.
        """
        if x.ndim < 2:
            raise AttackError(f"stamp needs images (..., H, W); got shape {tuple(x.shape)}")
        mask = self.mask(x.shape[-2], x.shape[-1]).to(x.device)
        stamped = x.clone()
        stamped[..., mask] = self.value
        return stamped

    def split(self, num_parts: int) -> list[PixelPatternTrigger]:
        """Split into ``num_parts`` local triggers for DBA [Xie et al., 2020].

        The trigger's pixels, in row-major order, are cut into ``num_parts`` consecutive
        groups of sizes differing by at most one (``numpy.array_split``); part ``k`` is a
        trigger with the same footprint, corner and margin that sets only group ``k``. The
        parts are disjoint and together set exactly this trigger's pixels; a 4x4 square split
        in 4 gives the four 1x4 stripes of DBA's MNIST trigger.

        Raises
        ------
        AttackError
            If ``num_parts`` is not in ``[1, num_pixels]``.
        """
        require_integer("attack.num_parts", num_parts, minimum=1)
        if num_parts > self.num_pixels:
            raise AttackError(f"attack.num_parts must be <= the trigger's {self.num_pixels} pixels; got {num_parts}")
        positions = np.argwhere(self._pattern_mask)
        parts = []
        for group in np.array_split(positions, num_parts):
            part = np.zeros_like(self._pattern_mask, dtype=int)
            part[group[:, 0], group[:, 1]] = 1
            parts.append(
                PixelPatternTrigger(
                    pattern=part.tolist(),
                    corner=self.corner,
                    margin=self.margin,
                    value=self.value,
                    offset=self.offset,
                )
            )
        return parts

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PixelPatternTrigger):
            return NotImplemented
        return np.array_equal(self._pattern_mask, other._pattern_mask) and (
            self.corner,
            self.margin,
            self.value,
            self.offset,
        ) == (other.corner, other.margin, other.value, other.offset)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        size = f", size={self.size}" if isinstance(self.pattern, str) else ""
        return (
            f"PixelPatternTrigger(pattern={self.pattern!r}{size}, "
            f"corner={self.corner!r}, margin={self.margin}, value={self.value}, offset={self.offset})"
        )


def as_trigger(trigger: PixelPatternTrigger | Mapping[str, object] | None) -> PixelPatternTrigger:
    """A trigger from itself, a mapping of its constructor arguments, or None (the default)."""
    if trigger is None:
        return PixelPatternTrigger()
    if isinstance(trigger, PixelPatternTrigger):
        return trigger
    if isinstance(trigger, Mapping):
        # Values as Hydra passes them; PixelPatternTrigger checks each.
        arguments: dict[str, Any] = {str(key): value for key, value in trigger.items() if key != "_target_"}
        pattern = arguments.get("pattern")
        if isinstance(pattern, Sequence) and not isinstance(pattern, str):
            arguments["pattern"] = [list(row) for row in pattern]
        return PixelPatternTrigger(**arguments)
    raise AttackError(f"attack.trigger must be a PixelPatternTrigger, a mapping or null; got {type(trigger).__name__}")


def poison_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    trigger: PixelPatternTrigger,
    target_label: int,
    num_poisoned: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``min(num_poisoned, len(y))`` samples, chosen with ``generator``, by stamped
    copies labelled ``target_label``; the other samples are returned unchanged.

    :func:`~fedshield.attacks.boosted.poison_with_stamp` with ``trigger.stamp``: the inputs are
    not modified, and the choice is ``torch.randperm(len(y), generator)`` cut to the first
    ``num_poisoned`` positions.
    """
    return poison_with_stamp(
        x, y, stamp=trigger.stamp, target_label=target_label, num_poisoned=num_poisoned, generator=generator
    )


class BackdoorAttack(BoostedBackdoor):
    """Pixel-pattern backdoor with optional model-replacement boosting.

    Parameters
    ----------
    trigger : PixelPatternTrigger or mapping or None
        The trigger (None: the default 3x3 checker in the bottom-right corner, margin 1).
    **parameters
        The fields of :class:`~fedshield.attacks.boosted.BackdoorParameters`: ``num_malicious``,
        ``schedule``, ``target_label``, ``poison_per_batch``, ``scale``,
        ``server_learning_rate``, ``local_steps``, ``learning_rate``.
    """

    name = "backdoor"

    def __init__(
        self,
        *,
        trigger: PixelPatternTrigger | Mapping[str, object] | None = None,
        **parameters: Any,
    ) -> None:
        super().__init__(BackdoorParameters.from_keywords(parameters))
        self.trigger = as_trigger(trigger)

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the trigger to test inputs (for the attack-success measurement)."""
        return self.trigger.stamp(x)

    def trigger_region(self, height: int, width: int) -> torch.Tensor | None:
        return self.trigger.mask(height, width)


class DistributedBackdoorAttack(BackdoorAttack):
    """Distributed backdoor attack (DBA) [Xie et al., 2020].

    The global trigger is split into ``num_parts`` local triggers
    (:meth:`PixelPatternTrigger.split`). :meth:`for_client` gives the malicious client of rank
    :math:`r` in the sorted IDs of *all* malicious clients an attack that trains with local
    trigger :math:`r \\bmod K`; the server measures the attack with this object, whose
    :meth:`stamp` applies the global trigger.

    Parameters
    ----------
    num_parts : int
        :math:`K`, the number of local triggers (DBA on MNIST: 4).
    trigger : PixelPatternTrigger or mapping or None
        The global trigger (None: a 4x4 white square in the bottom-right corner, margin 1,
        whose parts are four 1x4 stripes).
    **parameters
        As for :class:`BackdoorAttack`; every client of the attack trains with them.
    """

    name = "dba"

    def __init__(
        self,
        *,
        num_parts: int = 4,
        trigger: PixelPatternTrigger | Mapping[str, object] | None = None,
        **parameters: Any,
    ) -> None:
        if trigger is None:
            trigger = PixelPatternTrigger(pattern="square", size=4)
        super().__init__(trigger=trigger, **parameters)
        self.num_parts = num_parts
        self.local_triggers = self.trigger.split(num_parts)

    def local_trigger_index(self, user_id: int, malicious_ids: Collection[int]) -> int:
        """:math:`r \\bmod K` for the rank :math:`r` of ``user_id`` in sorted ``malicious_ids``.

        Raises
        ------
        AttackError
            If ``user_id`` is not in ``malicious_ids``.
        """
        ranked = sorted({int(uid) for uid in malicious_ids})
        if int(user_id) not in ranked:
            raise AttackError(f"user_id {user_id} is not one of the malicious_ids {ranked}")
        return ranked.index(int(user_id)) % self.num_parts

    def for_client(self, user_id: int, malicious_ids: Collection[int]) -> BackdoorAttack:
        """A :class:`BackdoorAttack` training with this client's local trigger.

        Every other parameter is this attack's (schedule, target, poisoning rate, boost and the
        attacker's SGD budget); its ``stamp`` is the local trigger, so measure attack success
        with the :class:`DistributedBackdoorAttack` itself.
        """
        local = self.local_triggers[self.local_trigger_index(user_id, malicious_ids)]
        return BackdoorAttack(trigger=local, **self.parameters.keywords())

    def training_stamp(self) -> Stamp:
        raise RuntimeError(
            "DistributedBackdoorAttack trains each client with its own part of the trigger: "
            "call for_client(user_id, malicious_ids) and use the returned attack's hooks"
        )
