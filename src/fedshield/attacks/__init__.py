"""Poisoning attacks: each a pure function of its inputs plus a thin :class:`Attack` subclass.

Model poisoning with full knowledge of the round's updates (``needs_benign_updates``):
:class:`KrumAttack`, :class:`TrimAttack` [Fang et al., 2020], :class:`ZeroUpdateAttack`
(FLCert), :class:`LIEAttack` [Baruch et al., 2019], :class:`IPMAttack` [Xie et al., 2020],
:class:`MinMaxAttack` [Shejwalkar and Houmansadr, 2021], :class:`GaussianAttack`.
Update rewriting: :class:`SignFlipAttack`. Data poisoning: :class:`LabelFlipAttack`,
:class:`BackdoorAttack` (BadNets trigger, model replacement) and
:class:`DistributedBackdoorAttack` (DBA); :class:`AdaptiveFlipBackdoor` also counters FLIP's
hardening; :class:`TextBackdoorAttack` is the word-prediction backdoor. The backdoors share
:class:`BackdoorParameters` and :class:`BoostedBackdoor` (poisoned batches, the attacker's SGD
budget, model-replacement boosting); :func:`attack_success_rate` is
:func:`fedshield.task.metrics.attack_success_rate`. Honest baseline: :class:`NoAttack`.

Every class takes ``num_malicious`` and ``schedule`` (a :class:`Schedule` or a mapping of its
fields) as keyword arguments, so a Hydra node ``_target_: fedshield.attacks.TrimAttack``
instantiates it; which clients are malicious is :func:`choose_malicious`.
"""

from fedshield.attacks.adaptive_flip import AdaptiveFlipBackdoor, counter_hardening_batch
from fedshield.attacks.backdoor import (
    BackdoorAttack,
    DistributedBackdoorAttack,
    PixelPatternTrigger,
    poison_batch,
)
from fedshield.attacks.base import (
    Attack,
    AttackError,
    CraftContext,
    CraftingAttack,
    Schedule,
    as_schedule,
)
from fedshield.attacks.boosted import BackdoorParameters, BoostedBackdoor
from fedshield.attacks.fang import (
    KrumAttack,
    TrimAttack,
    ZeroUpdateAttack,
    change_direction,
    krum_attack,
    krum_attack_lambda,
    krum_attack_upper_bound,
    trim_attack,
    zero_update_attack,
)
from fedshield.attacks.gaussian import GaussianAttack, gaussian_attack
from fedshield.attacks.honest import NoAttack
from fedshield.attacks.ipm import IPMAttack, ipm_attack
from fedshield.attacks.label_flip import LabelFlipAttack, flip_labels
from fedshield.attacks.lie import LIEAttack, lie_attack, lie_z
from fedshield.attacks.min_max import (
    MinMaxAttack,
    min_max_attack,
    min_max_gamma,
    min_max_perturbation,
)
from fedshield.attacks.selection import choose_malicious
from fedshield.attacks.sign_flip import SignFlipAttack, sign_flip_attack
from fedshield.attacks.text_backdoor import TextBackdoorAttack, text_attack_success_rate
from fedshield.task.metrics import attack_success_rate

__all__ = [
    "TextBackdoorAttack",
    "text_attack_success_rate",
    "AdaptiveFlipBackdoor",
    "Attack",
    "AttackError",
    "BackdoorAttack",
    "BackdoorParameters",
    "BoostedBackdoor",
    "CraftContext",
    "CraftingAttack",
    "DistributedBackdoorAttack",
    "GaussianAttack",
    "IPMAttack",
    "KrumAttack",
    "LIEAttack",
    "LabelFlipAttack",
    "MinMaxAttack",
    "NoAttack",
    "PixelPatternTrigger",
    "Schedule",
    "SignFlipAttack",
    "TrimAttack",
    "ZeroUpdateAttack",
    "as_schedule",
    "attack_success_rate",
    "change_direction",
    "counter_hardening_batch",
    "choose_malicious",
    "flip_labels",
    "gaussian_attack",
    "ipm_attack",
    "krum_attack",
    "krum_attack_lambda",
    "krum_attack_upper_bound",
    "lie_attack",
    "lie_z",
    "min_max_attack",
    "min_max_gamma",
    "min_max_perturbation",
    "poison_batch",
    "sign_flip_attack",
    "trim_attack",
    "zero_update_attack",
]
