"""MNIST-style IDX files (gzip or raw), with checks for the magic number and truncation.

Format (LeCun et al.): a 4-byte magic ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the data. MNIST uses type 0x08 (unsigned byte).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fedshield.data.base import ArrayDataset, DatasetError, data_folder, images_to_float, seeded_split

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Official file stems; both the training and the test pair are optional.
_PAIRS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file; raise :class:`DatasetError` naming the file if it is corrupt."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:  # gzip raises these on truncated or non-gzip input
        raise DatasetError(f"cannot read IDX file {path}: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DatasetError(f"{path} is not an IDX file: wrong magic number {raw[:4].hex()}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated: header needs {header} bytes, file has {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[raw[2]]
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(
            f"{path} is truncated or padded: expected {expected} bytes for shape {shape}, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.exists():
            return candidate
    return None


def _read_pair(root: Path, images_stem: str, labels_stem: str) -> ArrayDataset | None:
    images_path, labels_path = _find(root, images_stem), _find(root, labels_stem)
    if images_path is None and labels_path is None:
        return None
    if images_path is None or labels_path is None:
        missing = images_stem if images_path is None else labels_stem
        raise DatasetError(f"IDX pair incomplete in {root}: {missing}[.gz] is missing")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{images_path.name} {images.shape} and {labels_path.name} {labels.shape} do not match")
    return ArrayDataset(images_to_float(images), labels.astype(np.int64), num_classes=10)


def load_mnist_idx(
    *, root: str | Path, seed: int = 0, test_fraction: float = 0.2, **_: object
) -> tuple[ArrayDataset, ArrayDataset]:
    """MNIST from IDX files in ``root``.

    With both official pairs present, the official train/test split is used; with one pair
    only (e.g. the 10,000-image test set), it is split train/test with ``seed``.
    """
    root = data_folder(root, dataset="mnist", holds="MNIST IDX files")
    train = _read_pair(root, *_PAIRS["train"])
    test = _read_pair(root, *_PAIRS["test"])
    if train is not None and test is not None:
        return train, test
    single = train if train is not None else test
    if single is None:
        raise DatasetError(
            f"no MNIST IDX files in {root}: expected train-images-idx3-ubyte[.gz] and/or "
            "t10k-images-idx3-ubyte[.gz] with their label files"
        )
    return seeded_split(single, test_fraction=test_fraction, seed=seed)
