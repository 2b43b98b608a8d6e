"""FLIP [Zhang et al., ICLR 2023]: backdoor hardening on benign clients, rejection on the server.

Two sides, one :class:`FlipConfig`:

- client side, :class:`FlipHardening` (a :class:`~fedshield.task.defense.ClientDefense`):
  trigger inversion (:mod:`~fedshield.flip.inversion`), the per-client class-distance cache
  (:mod:`~fedshield.flip.class_distance`), and training on stamped inputs with their true labels
  (:mod:`~fedshield.flip.hardening`);
- server side, :class:`ConfidenceRejection`: predictions with softmax confidence below tau are
  rejected (:mod:`~fedshield.flip.rejection`).

:mod:`~fedshield.flip.theory` checks the loss bounds of the paper's Theorem 1.
"""

from fedshield.flip.client import FlipHardening
from fedshield.flip.config import FlipConfig, FlipConfigError
from fedshield.flip.inversion import InversionConfig, InvertedTrigger, invert_pair, invert_trigger, invert_universal
from fedshield.flip.rejection import ConfidenceRejection, flip_metrics

__all__ = [
    "ConfidenceRejection",
    "FlipConfig",
    "FlipConfigError",
    "FlipHardening",
    "InversionConfig",
    "InvertedTrigger",
    "flip_metrics",
    "invert_pair",
    "invert_trigger",
    "invert_universal",
]
