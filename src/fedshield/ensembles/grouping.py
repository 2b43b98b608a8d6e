"""FLCert client grouping: N disjoint groups by keyed hash (FLCert-D) or N sampled groups (FLCert-P).

Cao et al., "FLCert: Provably Secure Federated Learning against Poisoning Attacks", TIFS 2022,
Sec. IV. A malicious client can neither choose nor predict its group beyond what the key allows:
FLCert-D keys BLAKE2b with the run seed (never Python's per-process salted ``hash()``).

FLCert-D groups clients in one of two ways (:data:`FLCERT_D_GROUPINGS`):

- ``hash``, the paper's: group = keyed hash mod N. A client's group depends only on its ID and
  the key, so it survives a changing population, but about N e^(-n/N) groups stay empty.
- ``balanced``: clients ranked by their keyed hash are dealt round-robin into the N groups, so
  every group gets floor(n/N) or ceil(n/N) clients and every group votes. The certificate needs
  only disjoint groups, and the ranking is as unpredictable without the key as the hash itself.
"""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np

from fedshield.task.determinism import derive_seed


class GroupingError(ValueError):
    """Bad ensemble configuration (N, k, or an exhaustive ensemble that is too large)."""


FLCERT_D_GROUPINGS = ("balanced", "hash")


def keyed_hash(user_id: int, *, key: int) -> int:
    """Keyed 64-bit BLAKE2b of a user ID."""
    digest = hashlib.blake2b(
        int(user_id).to_bytes(8, "little", signed=False), digest_size=8, key=int(key).to_bytes(8, "little")
    )
    return int.from_bytes(digest.digest(), "little")


def hash_group(user_id: int, *, num_groups: int, key: int) -> int:
    """FLCert-D group of a client: keyed BLAKE2b(user ID) mod N (paper Sec. IV-B, eq. 9)."""
    return keyed_hash(user_id, key=key) % num_groups


def _check_num_groups(num_groups: int, num_clients: int) -> None:
    if not 1 <= num_groups <= num_clients:
        raise GroupingError(f"ensemble.num_groups must be in [1, n={num_clients}]; got {num_groups}")


def flcert_d_groups(user_ids: tuple[int, ...], *, num_groups: int, key: int) -> list[tuple[int, ...]]:
    """Partition clients into ``num_groups`` disjoint groups by keyed hash.

    A group may come out empty (hashing is not balanced; with n / N = 2 about e^-2 of the groups
    are). An empty group trains no model and casts no vote, which keeps the certificate sound:
    m malicious clients still reach at most m of the voting groups.

    Raises
    ------
    GroupingError
        If N is outside [1, n].
    """
    _check_num_groups(num_groups, len(user_ids))
    groups: list[list[int]] = [[] for _ in range(num_groups)]
    for uid in user_ids:
        groups[hash_group(uid, num_groups=num_groups, key=key)].append(uid)
    return [tuple(sorted(members)) for members in groups]


def balanced_groups(user_ids: tuple[int, ...], *, num_groups: int, key: int) -> list[tuple[int, ...]]:
    """Partition clients into ``num_groups`` disjoint groups of floor(n/N) or ceil(n/N) clients.

    The clients, ranked by keyed hash (ties, which need a 64-bit collision, by user ID), are
    dealt round-robin: the client of rank r joins group r mod N. No group is empty for N <= n.

    Raises
    ------
    GroupingError
        If N is outside [1, n].
    """
    _check_num_groups(num_groups, len(user_ids))
    ranked = sorted(user_ids, key=lambda uid: (keyed_hash(uid, key=key), uid))
    return [tuple(sorted(ranked[group::num_groups])) for group in range(num_groups)]


def flcert_p_groups(
    user_ids: tuple[int, ...],
    *,
    num_groups: int,
    group_size: int,
    seed: int,
    exhaustive: bool = False,
    max_exhaustive_groups: int = 10_000,
) -> list[tuple[int, ...]]:
    """FLCert-P: N groups of k clients, each drawn uniformly without replacement (Sec. IV-C).

    With ``exhaustive`` every one of the C(n, k) subsets is a group, in lexicographic order of
    the sorted user IDs, and ``num_groups`` is ignored.
    """
    num_clients = len(user_ids)
    if not 1 <= group_size <= num_clients:
        raise GroupingError(f"ensemble.group_size must be in [1, n={num_clients}]; got {group_size}")
    ordered = tuple(sorted(user_ids))
    if exhaustive:
        total = math.comb(num_clients, group_size)
        if total > max_exhaustive_groups:
            raise GroupingError(
                f"ensemble.exhaustive: C(n={num_clients}, k={group_size}) = {total} groups exceeds "
                f"ensemble.max_exhaustive_groups={max_exhaustive_groups}"
            )
        return [tuple(group) for group in itertools.combinations(ordered, group_size)]
    if num_groups < 1:
        raise GroupingError(f"ensemble.num_groups must be >= 1; got {num_groups}")
    rng = np.random.default_rng(derive_seed("flcert-p-groups", seed))
    return [
        tuple(sorted(ordered[i] for i in rng.choice(num_clients, size=group_size, replace=False)))
        for _ in range(num_groups)
    ]
