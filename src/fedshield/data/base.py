"""The in-memory dataset type shared by every loader, and the error bad data raises."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The folder that holds the datasets: the default dataset.root of dataset=NAME is
# $FEDSHIELD_DATA/NAME, or ~/.cache/fedshield/NAME when it is unset (fedshield/conf/dataset/).
DATA_ENV = "FEDSHIELD_DATA"


class DatasetError(ValueError):
    """A dataset could not be loaded or split: unknown name, missing or corrupt files, bad split."""


def data_folder(root: str | Path, *, dataset: str, holds: str) -> Path:
    """``root`` (``~`` expanded) if it is a folder; else a :class:`DatasetError` that says how to
    point fedshield at the data."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DatasetError(
            f"dataset.root: not a folder (dataset={dataset} reads {holds} from it); pass dataset.root=DIR, "
            f"or set {DATA_ENV} to the folder holding the datasets (default root: ${DATA_ENV}/{dataset}, "
            f"~/.cache/fedshield/{dataset} when unset); got {str(folder)!r}"
        )
    return folder


@dataclass(frozen=True)
class ArrayDataset:
    """Features, labels and (for natural federations) the user each sample came from.

    Attributes
    ----------
    x : np.ndarray
        float32 features, (num_samples, C, H, W) for images with values in [0, 1], or
        (num_samples, num_features) for tabular data.
    y : np.ndarray
        int64 labels in ``[0, num_classes)``.
    num_classes : int
    users : np.ndarray | None
        int64 natural user of each sample (HAR subjects), or None.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    users: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DatasetError(f"x and y differ in length: {len(self.x)} != {len(self.y)}")
        if self.users is not None and len(self.users) != len(self.y):
            raise DatasetError(f"users and y differ in length: {len(self.users)} != {len(self.y)}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise DatasetError(f"labels must lie in [0, {self.num_classes}); got [{self.y.min()}, {self.y.max()}]")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        users = None if self.users is None else self.users[indices]
        return ArrayDataset(self.x[indices], self.y[indices], self.num_classes, users)


def seeded_split(dataset: ArrayDataset, *, test_fraction: float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Shuffle with ``seed`` and cut off ``test_fraction`` of the samples as the test set."""
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be in (0, 1); got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(dataset))
    num_test = int(round(test_fraction * len(dataset)))
    if num_test == 0 or num_test == len(dataset):
        raise DatasetError(f"test_fraction={test_fraction} leaves an empty split of {len(dataset)} samples")
    return dataset.subset(np.sort(order[num_test:])), dataset.subset(np.sort(order[:num_test]))


def images_to_float(images: np.ndarray) -> np.ndarray:
    """uint8-range images (N, H, W) or (N, H, W, C) to float32 (N, C, H, W) in [0, 1]."""
    array = np.asarray(images, dtype=np.float32) / 255.0
    if array.ndim == 3:
        return array[:, None, :, :]
    if array.ndim == 4:
        return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    raise DatasetError(f"images must be (N, H, W) or (N, H, W, C); got shape {array.shape}")
