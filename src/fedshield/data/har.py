"""UCI Human Activity Recognition (Anguita et al., 2013): 561 features, 6 activities, 30 subjects.

Expected layout (as in the UCI archive), under ``root`` or ``root/UCI HAR Dataset``::

    train/X_train.txt  train/y_train.txt  train/subject_train.txt
    test/X_test.txt    test/y_test.txt    test/subject_test.txt

Labels 1..6 become 0..5; each subject is one natural client (``partition=natural``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedshield.data.base import ArrayDataset, DatasetError, data_folder

NUM_FEATURES = 561
NUM_ACTIVITIES = 6


def _read_matrix(path: Path, *, columns: int | None) -> np.ndarray:
    if not path.exists():
        raise DatasetError(f"HAR file missing: {path}")
    try:
        array = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise DatasetError(f"HAR file {path} is corrupt: {error}") from error
    if columns is not None and array.shape[1] != columns:
        raise DatasetError(f"HAR file {path} has {array.shape[1]} columns; expected {columns}")
    return array


def _load_split(folder: Path, split: str) -> ArrayDataset:
    features = _read_matrix(folder / split / f"X_{split}.txt", columns=NUM_FEATURES)
    labels = _read_matrix(folder / split / f"y_{split}.txt", columns=1)[:, 0].astype(np.int64) - 1
    subjects = _read_matrix(folder / split / f"subject_{split}.txt", columns=1)[:, 0].astype(np.int64)
    if not (len(features) == len(labels) == len(subjects)):
        raise DatasetError(f"HAR {split} files differ in length: {len(features)}, {len(labels)}, {len(subjects)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_ACTIVITIES):
        raise DatasetError(f"HAR {split} labels must be 1..{NUM_ACTIVITIES}")
    return ArrayDataset(features.astype(np.float32), labels, NUM_ACTIVITIES, users=subjects)


def load_har(*, root: str | Path, **_: object) -> tuple[ArrayDataset, ArrayDataset]:
    root = data_folder(root, dataset="har", holds="the UCI HAR layout")
    folder = root / "UCI HAR Dataset" if (root / "UCI HAR Dataset").is_dir() else root
    if not (folder / "train").is_dir():
        raise DatasetError(f"dataset.root: holds no UCI HAR layout (train/X_train.txt ...); got {str(root)!r}")
    return _load_split(folder, "train"), _load_split(folder, "test")
