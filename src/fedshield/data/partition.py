"""Split a training set into a federation of n clients, each with a stable 64-bit user ID.

Schemes
-------
iid
    A seeded shuffle dealt into n near-equal shares.
fang
    The "degree of non-IID" scheme of Fang et al. (USENIX Security 2020) used by FLCert: the
    clients are split evenly into L groups (L = number of labels); a sample of label l goes to
    group l with probability q and to each other group with probability (1 - q) / (L - 1),
    then to a uniformly chosen client of that group. q = 1/L is IID; larger q is more skewed.
dirichlet
    Label skew (Hsu et al., 2019): for each label, client shares ~ Dirichlet(alpha * 1_n).
natural
    One client per natural user (e.g. a HAR subject); ``num_clients`` must equal the number of users.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedshield.data.base import ArrayDataset, DatasetError
from fedshield.task.determinism import derive_seed

_MAX_DIRICHLET_TRIES = 100


@dataclass(frozen=True)
class Federation:
    """Client ``i`` has user ID ``user_ids[i]`` and holds ``dataset[indices[i]]``."""

    user_ids: tuple[int, ...]
    indices: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if len(set(self.user_ids)) != len(self.user_ids):
            raise DatasetError("user IDs must be unique")

    @property
    def num_clients(self) -> int:
        return len(self.user_ids)

    def indices_of(self, user_id: int) -> np.ndarray:
        return self.indices[self._position[user_id]]

    @functools.cached_property
    def _position(self) -> dict[int, int]:
        # Cached: rebuilding it on every lookup cost 0.1 ms per client update at n = 1,000.
        # (cached_property writes the instance __dict__ directly, which a frozen dataclass allows.)
        return {uid: i for i, uid in enumerate(self.user_ids)}


def make_user_ids(num_clients: int, *, seed: int) -> tuple[int, ...]:
    """Stable 63-bit user IDs: BLAKE2b of (seed, client index), never Python's salted hash()."""
    ids = tuple(derive_seed("user-id", seed, index) for index in range(num_clients))
    if len(set(ids)) != num_clients:  # 2^-63 odds, but a certificate must not rest on luck
        raise DatasetError("user-ID collision; choose another seed")
    return ids


def _deal(order: np.ndarray, num_clients: int) -> list[np.ndarray]:
    return [np.sort(share) for share in np.array_split(order, num_clients)]


def partition_iid(labels: np.ndarray, num_clients: int, *, rng: np.random.Generator) -> list[np.ndarray]:
    return _deal(rng.permutation(len(labels)), num_clients)


def partition_fang(
    labels: np.ndarray, num_clients: int, *, q: float, num_classes: int, rng: np.random.Generator
) -> list[np.ndarray]:
    if not 0.0 <= q <= 1.0:
        raise DatasetError(f"partition.q must be in [0, 1]; got {q}")
    if num_classes < 2:
        raise DatasetError(f"the fang partition needs at least 2 labels; got {num_classes}")
    groups = np.array_split(np.arange(num_clients), num_classes)
    if any(len(group) == 0 for group in groups):
        raise DatasetError(
            f"the fang partition needs num_clients >= number of labels ({num_classes}); got {num_clients}"
        )
    other_share = (1.0 - q) / (num_classes - 1)
    shares: list[list[int]] = [[] for _ in range(num_clients)]
    for index, label in enumerate(labels):
        probabilities = np.full(num_classes, other_share)
        probabilities[label] = q
        group = groups[rng.choice(num_classes, p=probabilities)]
        shares[int(group[rng.integers(len(group))])].append(index)
    return [np.asarray(share, dtype=np.int64) for share in shares]


def partition_dirichlet(
    labels: np.ndarray, num_clients: int, *, alpha: float, num_classes: int, rng: np.random.Generator
) -> list[np.ndarray]:
    if not alpha > 0:
        raise DatasetError(f"partition.alpha must be > 0; got {alpha}")
    for _ in range(_MAX_DIRICHLET_TRIES):
        shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for label in range(num_classes):
            members = rng.permutation(np.flatnonzero(labels == label))
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
            for client, part in enumerate(np.split(members, cuts)):
                shares[client].append(part)
        result = [np.sort(np.concatenate(parts)).astype(np.int64) for parts in shares]
        if all(len(share) > 0 for share in result):
            return result
    raise DatasetError(
        f"Dirichlet(alpha={alpha}) left a client without samples in {_MAX_DIRICHLET_TRIES} draws; "
        "use fewer clients or a larger alpha"
    )


def partition_natural(users: np.ndarray | None, num_clients: int) -> list[np.ndarray]:
    if users is None:
        raise DatasetError("partition.scheme=natural needs a dataset with natural users (e.g. har)")
    distinct = np.unique(users)
    if len(distinct) != num_clients:
        raise DatasetError(
            f"partition.scheme=natural: num_clients must equal the {len(distinct)} users; got {num_clients}"
        )
    return [np.flatnonzero(users == user) for user in distinct]


def make_federation(
    dataset: ArrayDataset,
    *,
    num_clients: int,
    scheme: str = "iid",
    seed: int = 0,
    q: float = 0.5,
    alpha: float = 0.5,
) -> Federation:
    """Partition ``dataset`` into ``num_clients`` clients with ``scheme`` (see the module docstring)."""
    if num_clients < 1:
        raise DatasetError(f"num_clients must be >= 1; got {num_clients}")
    if num_clients > len(dataset):
        raise DatasetError(f"num_clients={num_clients} is more than the {len(dataset)} training samples")
    rng = np.random.default_rng(derive_seed("partition", scheme, seed))
    if scheme == "iid":
        indices = partition_iid(dataset.y, num_clients, rng=rng)
    elif scheme == "fang":
        indices = partition_fang(dataset.y, num_clients, q=q, num_classes=dataset.num_classes, rng=rng)
    elif scheme == "dirichlet":
        indices = partition_dirichlet(dataset.y, num_clients, alpha=alpha, num_classes=dataset.num_classes, rng=rng)
    elif scheme == "natural":
        indices = partition_natural(dataset.users, num_clients)
    else:
        raise DatasetError(f"partition.scheme must be one of iid, fang, dirichlet, natural; got {scheme!r}")
    return Federation(make_user_ids(num_clients, seed=seed), tuple(indices))
