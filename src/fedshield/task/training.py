"""Local training: the one training loop that every driver (Flower, in-process) calls.

A client runs ``local_steps`` mini-batch SGD iterations from the global model. Its batch order
comes from a generator seeded by (job seed, round, user ID), so the result is a pure function
of the inputs, whichever process or thread runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# (x, y, generator) -> (x, y): data poisoning by an attacker, or FLIP's trigger-stamped copies.
BatchTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LocalTrainingConfig:
    """SGD budget of one client in one round.

    Attributes
    ----------
    local_steps : int
        Number of mini-batch SGD iterations (E in FLCert).
    batch_size : int
        Mini-batch size; a client with fewer samples uses all of them.
    learning_rate, momentum, weight_decay : float
        Parameters of ``torch.optim.SGD``; the optimizer is created afresh every round.
    """

    local_steps: int = 5
    batch_size: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.local_steps < 1:
            raise ValueError(f"client.local_steps must be >= 1; got {self.local_steps}")
        if self.batch_size < 1:
            raise ValueError(f"client.batch_size must be >= 1; got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"client.learning_rate must be > 0; got {self.learning_rate}")

    @property
    def plain_sgd(self) -> bool:
        """No momentum and no weight decay: each step is ``p -= lr * grad`` alone."""
        return self.momentum == 0 and self.weight_decay == 0


def batch_indices(
    num_samples: int, *, batch_size: int, num_batches: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Index batches for ``num_batches`` steps: seeded epochs of a fresh permutation each."""
    batch_size = min(batch_size, num_samples)
    batches: list[torch.Tensor] = []
    order = torch.randperm(num_samples, generator=generator)
    position = 0
    while len(batches) < num_batches:
        if position + batch_size > num_samples:
            order = torch.randperm(num_samples, generator=generator)
            position = 0
        batches.append(order[position : position + batch_size])
        position += batch_size
    return batches


def local_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    config: LocalTrainingConfig,
    generator: torch.Generator,
    batch_transform: BatchTransform | None = None,
) -> float:
    """Train ``model`` in place for ``config.local_steps`` SGD steps; return the mean loss.

    ``x`` and ``y`` are the client's whole local dataset, on the model's device.
    """
    if len(y) == 0:
        raise ValueError("a client with no samples cannot train")
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )
    total_loss = 0.0
    for index in batch_indices(
        len(y), batch_size=config.batch_size, num_batches=config.local_steps, generator=generator
    ):
        index = index.to(x.device)
        batch_x, batch_y = x[index], y[index]
        if batch_transform is not None:
            batch_x, batch_y = batch_transform(batch_x, batch_y, generator)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(batch_x), batch_y)
        loss.backward()
        optimizer.step()
        total_loss += float(loss.detach())
    return total_loss / config.local_steps


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched to bound memory.

    256 rather than 1024: the CNN's activations then stay below glibc's mmap threshold and in
    cache; the CNN's test-set pass is up to 2x faster, logits bit-identical (bench/README.md).
    """
    model.eval()
    return torch.cat([model(x[start : start + batch_size]) for start in range(0, len(x), batch_size)])
