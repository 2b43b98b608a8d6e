"""The hook through which a client-side defense (FLIP's hardening) shapes benign local training."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

from fedshield.task.training import BatchTransform

# Per-client, per-job state that survives across rounds (Flower: kept in context.state).
ClientState = dict[str, np.ndarray]


class ClientDefense(ABC):
    @abstractmethod
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
        """Inspect the global ``model`` before local training; return the batch transform
        for training and the client's new state. Must not change ``model``'s parameters."""
