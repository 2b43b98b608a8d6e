"""Determinism: stable seeds from structured keys, and deterministic torch kernels.

Every random choice in a run (client sampling, a client's batch order, an attacker's noise)
takes its seed from :func:`derive_seed` over the run seed and the coordinates of the choice
(job, round, user ID, purpose). The seed therefore depends on *what* is being drawn, never on
the order in which Ray or a worker pool happened to run things.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_SEED_BITS = 63


def derive_seed(*parts: int | str) -> int:
    """Hash ``parts`` with BLAKE2b into a non-negative 63-bit seed.

    Python's ``hash()`` is salted per process, so it must never be used for this.
    """
    digest = hashlib.blake2b(digest_size=8, person=b"fedshield-seed")
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (int, str, np.integer)):
            raise TypeError(f"seed parts must be int or str; got {type(part).__name__}")
        digest.update(repr(int(part) if isinstance(part, np.integer) else part).encode())
        digest.update(b"\x1f")
    return int.from_bytes(digest.digest(), "little") >> (64 - _SEED_BITS)


def torch_generator(seed: int) -> torch.Generator:
    """A CPU torch generator seeded with ``seed`` (CPU so that the draws do not depend on device)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def numpy_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def configure_torch(*, threads: int = 1) -> None:
    """Deterministic kernels and a fixed thread count, so results do not depend on the process."""
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = False
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
