"""FLIP's settings in one dataclass, checked once when it is built.

Names follow the FLIP paper [Zhang et al., ICLR 2023] where it names a setting (``tau``, the
rejection threshold of Sec. 4.3) and its official code otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedshield.flip.inversion import InversionConfig


class FlipConfigError(ValueError):
    """A FLIP setting out of range, or local data FLIP cannot work on."""


@dataclass(frozen=True)
class FlipConfig:
    """FLIP's client-side hardening and server-side rejection settings.

    Attributes
    ----------
    num_classes : int
        Number of labels L (the class-distance cache is L x L).
    warmup_rounds : int
        Number of the client's first participations that invert universal triggers.
    pairs_per_round : int
        Label pairs inverted in each later participation (each may yield two triggers).
    inversion_steps, inversion_learning_rate, initial_cost
        Budget of each Neural Cleanse inversion (see :class:`InversionConfig`).
    min_inversion_success : float
        Attack success an inverted trigger must reach to count (FLIP: 0.9).
    max_mask_fraction : float
        Triggers whose mask L1 exceeds this share of H * W are discarded (FLIP: 1/8).
    stamped_share : float
        Stamped copies appended to each training batch, as a share of its size.
    exploration : float
        Probability that a pair slot explores an unmeasured pair (FLIP's code: 0.3).
    symmetric_min_samples : int
        Pairs are inverted both ways when the client holds more than this many samples of
        both labels (FLIP: 5).
    adversarial_training : bool
        Ablation switch: False inverts triggers and updates the cache but trains on clean
        batches.
    samples_per_label : int
        Samples of the source label used per pair inversion.
    universal_samples_per_label : int
        Samples of each other label used per universal (warm-up) inversion.
    universal_targets_per_round : int or None
        Warm-up budget: universal inversions per participation, for the target labels least
        measured so far (None: every label).
    tau : float
        Server side: predictions whose top softmax probability is below tau are rejected
        (FLIP Sec. 4.3: 0.3 on MNIST and Fashion-MNIST, 0.4 on CIFAR-10); 0 rejects nothing.
    start_round : int
        First server round in which benign clients run FLIP (FLIP starts from a converged
        model: run the clean warm-up rounds without it).
    reinvert_every : int
        Batches between re-inversions on the current local model during training (FLIP's
        code: 2); 0 inverts only once, on the global model, before the first batch.
    warm_inversion_steps : int
        Steps of an inversion warm-started from the client's cached trigger for the same
        direction (FLIP's code: 50 to 200); a fresh inversion takes ``inversion_steps``.
    warm_start : bool
        Keep each direction's last converged trigger in the client's state and start the next
        inversion of that direction from it (FLIP's ``mask_dict``).
    rewarmup_every : int or None
        Redo the universal warm-up every this many participations of a client, so that a
        backdoor injected after its first participation is measured (None: first
        ``warmup_rounds`` participations only).
    remember_participations : int
        Keep hardening against a plausible trigger for this many later participations of the
        client after its inversion stops finding it (0: only the triggers found in the round).
        Hardening removes the trigger from the local model, so without memory a client hardens
        only when the model it receives is backdoored, one round behind the attackers.
    batched_inversion : bool
        Invert a round's directions together, one forward pass per Adam step
        (:func:`~fedshield.flip.inversion.invert_batch`, 1.3-3.8x faster; equal to the one-by-one
        inversion within the float tolerance stated there); False inverts them one by one
        (:func:`~fedshield.flip.inversion.invert_problem`, the reference, and the path of the
        FLIP tables in REPRODUCTION.md before the batched one existed).
    """

    num_classes: int = 10
    warmup_rounds: int = 1
    pairs_per_round: int = 2
    inversion_steps: int = 200
    inversion_learning_rate: float = 0.1
    initial_cost: float = 1e-3
    min_inversion_success: float = 0.9
    max_mask_fraction: float = 0.125
    stamped_share: float = 0.5
    exploration: float = 0.3
    symmetric_min_samples: int = 5
    adversarial_training: bool = True
    samples_per_label: int = 50
    universal_samples_per_label: int = 5
    universal_targets_per_round: int | None = None
    tau: float = 0.3
    start_round: int = 1
    reinvert_every: int = 2
    warm_inversion_steps: int = 50
    warm_start: bool = True
    rewarmup_every: int | None = None
    remember_participations: int = 0
    batched_inversion: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.num_classes >= 2, "num_classes", "must be >= 2"),
            (0.0 <= self.tau < 1.0, "tau", "(rejection threshold) must be in [0, 1)"),
            (self.start_round >= 1, "start_round", "must be >= 1"),
            (self.warmup_rounds >= 0, "warmup_rounds", "must be >= 0"),
            (self.pairs_per_round >= 1, "pairs_per_round", "must be >= 1"),
            (0.0 < self.max_mask_fraction <= 1.0, "max_mask_fraction", "must be in (0, 1]"),
            (0.0 < self.stamped_share <= 1.0, "stamped_share", "must be in (0, 1]"),
            (0.0 <= self.exploration <= 1.0, "exploration", "must be in [0, 1]"),
            (self.symmetric_min_samples >= 0, "symmetric_min_samples", "must be >= 0"),
            (self.samples_per_label >= 1, "samples_per_label", "must be >= 1"),
            (self.universal_samples_per_label >= 1, "universal_samples_per_label", "must be >= 1"),
            (
                self.universal_targets_per_round is None or self.universal_targets_per_round >= 1,
                "universal_targets_per_round",
                "must be >= 1 or null",
            ),
            (self.reinvert_every >= 0, "reinvert_every", "must be >= 0"),
            (self.warm_inversion_steps >= 1, "warm_inversion_steps", "must be >= 1"),
            (self.rewarmup_every is None or self.rewarmup_every >= 1, "rewarmup_every", "must be >= 1 or null"),
            (self.remember_participations >= 0, "remember_participations", "must be >= 0"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise FlipConfigError(f"defense.{name} {allowed}; got {getattr(self, name)!r}")
        try:
            self.inversion  # noqa: B018 - builds and checks the inversion settings now
        except ValueError as error:
            raise FlipConfigError(f"defense: {error}") from error

    @property
    def inversion(self) -> InversionConfig:
        """The budget of each inversion."""
        return InversionConfig(
            steps=self.inversion_steps,
            learning_rate=self.inversion_learning_rate,
            initial_cost=self.initial_cost,
            min_success=self.min_inversion_success,
        )
