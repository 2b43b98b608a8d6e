"""Fashion-MNIST and CIFAR-10 through torchvision from a local root (downloaded only on request)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedshield.data.base import ArrayDataset, DatasetError, data_folder, images_to_float


def _load(dataset_class, *, root: str | Path, download: bool, dataset: str) -> tuple[ArrayDataset, ArrayDataset]:
    if not download:  # a download creates the folder
        data_folder(root, dataset=dataset, holds=f"torchvision's {dataset_class.__name__} files")
    splits = []
    for train in (True, False):
        try:
            data = dataset_class(root=str(Path(root).expanduser()), train=train, download=download)
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted."
            hint = "" if download else " (set dataset.download=true to download it)"
            raise DatasetError(
                f"{dataset_class.__name__} not found or corrupt under dataset.root={str(root)!r}{hint}: {error}"
            ) from error
        images = np.asarray(data.data)
        splits.append(ArrayDataset(images_to_float(images), np.asarray(data.targets, dtype=np.int64), num_classes=10))
    return splits[0], splits[1]


def load_fashion_mnist(*, root: str | Path, download: bool = False, **_: object) -> tuple[ArrayDataset, ArrayDataset]:
    """Fashion-MNIST (Xiao et al., 2017): 60,000 train and 10,000 test 28x28 grey images."""
    from torchvision.datasets import FashionMNIST

    return _load(FashionMNIST, root=root, download=download, dataset="fashion_mnist")


def load_cifar10(*, root: str | Path, download: bool = False, **_: object) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10 (Krizhevsky, 2009): 50,000 train and 10,000 test 32x32 colour images."""
    from torchvision.datasets import CIFAR10

    return _load(CIFAR10, root=root, download=download, dataset="cifar10")
