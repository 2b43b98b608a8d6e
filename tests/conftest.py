import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real MNIST test set: $FEDSHIELD_DATA/mnist (the default dataset.root), else beside the checkout.
MNIST_CANDIDATES = [
    *([Path(os.environ["FEDSHIELD_DATA"]).expanduser() / "mnist"] if os.environ.get("FEDSHIELD_DATA") else []),
    REPO_ROOT.parent / "shared" / "data" / "mnist",
]


@pytest.fixture(scope="session")
def shared_mnist_root() -> Path:
    for root in MNIST_CANDIDATES:
        if (root / "t10k-images-idx3-ubyte.gz").exists():
            return root.resolve()
    pytest.skip(f"real MNIST is in none of {[str(root) for root in MNIST_CANDIDATES]} (set FEDSHIELD_DATA)")
