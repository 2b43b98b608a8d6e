"""Which clients of a federation are malicious: a seeded, order-independent choice."""

from __future__ import annotations

from collections.abc import Iterable

from fedshield.attacks.base import AttackError
from fedshield.task.determinism import derive_seed


def choose_malicious(user_ids: Iterable[int], *, num_malicious: int, seed: int) -> frozenset[int]:
    """The ``num_malicious`` user IDs with the smallest ``derive_seed("malicious", seed, uid)``.

    Each user ID gets a pseudo-random key from the run seed and the ID itself, so the choice is
    deterministic, does not depend on the order (or repeats) of ``user_ids``, and for a fixed
    seed the malicious set grows monotonically with ``num_malicious``. Ties of the 63-bit keys
    (practically impossible) are broken by the user ID.

    Raises
    ------
    AttackError
        If ``num_malicious`` is not an integer in ``[0, number of distinct user_ids]``.
    """
    users = sorted({int(uid) for uid in user_ids})
    integer = isinstance(num_malicious, int) and not isinstance(num_malicious, bool)
    if not integer or not 0 <= num_malicious <= len(users):
        raise AttackError(
            f"attack.num_malicious must be an integer in [0, {len(users)}] "
            f"(the number of clients); got {num_malicious!r}"
        )
    ranked = sorted(users, key=lambda uid: (derive_seed("malicious", seed, uid), uid))
    return frozenset(ranked[:num_malicious])
