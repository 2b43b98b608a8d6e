"""The hook through which a client-side defense (FLIP's hardening) shapes benign local training.

A defense takes part in a benign client's round in two steps: :meth:`ClientDefense.start`
before local training (it may look at the global model and the client's data, and returns a
batch transform), and :meth:`DefenseRound.new_state` after it (the client's state for its next
round). The transform may keep a reference to the model being trained, so it can act on the
*current* local model at every batch (FLIP re-inverts triggers during local training).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

from fedshield.task.training import BatchTransform

# Per-client, per-job state that survives across rounds (Flower: kept in context.state).
ClientState = dict[str, np.ndarray]


class DefenseRound(ABC):
    """One benign client's round under a defense."""

    @property
    @abstractmethod
    def transform(self) -> BatchTransform | None:
        """The batch transform of this round's local training (None: clean batches)."""

    @abstractmethod
    def new_state(self) -> ClientState:
        """The client's state after training (new arrays; the input state is not modified)."""

    def diagnostics(self) -> dict[str, float]:
        """Numbers about what the defense did this round, reported with the client's reply."""
        return {}

    def found_masks(self) -> list[tuple[int, torch.Tensor]]:
        """``(target label, (H, W) mask)`` of each trigger the defense used, for diagnostics."""
        return []


class ClientDefense(ABC):
    @abstractmethod
    def start(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        server_round: int,
        state: ClientState,
        generator: torch.Generator,
    ) -> DefenseRound:
        """Begin a round before local training on ``model`` (the global model, trained in
        place afterwards). Must not change ``model``'s parameters."""
