"""The federation of tests/test_process_federation.py over TLS, as docs/DEPLOYMENT.md runs it.

scripts/generate-certs.sh makes the CA and the SuperLink's certificate; the SuperLink serves with
--ssl-*, the SuperNodes trust the CA with --root-certificates, and ``flwr run`` connects with
root-certificates in its config.toml. The job must equal the in-process engine's bit for bit, and
a SuperNode that talks plain HTTP (--insecure) must not get into the federation.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import pytest

from flower_processes import (
    HOST,
    NUM_NODES,
    REPO_ROOT,
    Certificates,
    Federation,
    check_tiny_run_equals_the_local_engine,
    free_ports,
    running_federation,
    stop,
)

pytestmark = [
    pytest.mark.flower,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
]

# A SuperNode that can reach the SuperLink joins within a few seconds (the fixture's nodes do).
JOIN_WINDOW = 20.0


@pytest.fixture(scope="module")
def tls_federation(tmp_path_factory) -> Iterator[Federation]:
    """NUM_NODES SuperNodes and ``flwr`` on a TLS SuperLink, with certificates from the script."""
    root = tmp_path_factory.mktemp("tls-federation")
    script = REPO_ROOT / "scripts" / "generate-certs.sh"
    done = subprocess.run(
        ["bash", str(script), str(root / "certificates")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    with running_federation(root, num_nodes=NUM_NODES, certificates=Certificates(root / "certificates")) as running:
        yield running


def test_superlink_serves_tls_with_the_generated_certificate(tls_federation):
    context = ssl.create_default_context(cafile=str(tls_federation.certificates.ca))
    with socket.create_connection((HOST, tls_federation.link_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as tls:
            assert tls.version() in {"TLSv1.2", "TLSv1.3"}


def test_flwr_run_over_tls_equals_the_local_engine_bit_for_bit(tls_federation, tmp_path):
    check_tiny_run_equals_the_local_engine(tls_federation, tmp_path)


def test_an_insecure_supernode_does_not_join_the_tls_superlink(tls_federation):
    # Execute
    (port,) = free_ports(1)
    node = tls_federation.start_supernode(
        "supernode-insecure", "--insecure", port=port, node_config=f"partition-id=0 num-partitions={NUM_NODES}"
    )
    try:
        deadline = time.monotonic() + JOIN_WINDOW
        while (
            time.monotonic() < deadline
            and node.poll() is None
            and "SuperNode ID" not in tls_federation.log("supernode-insecure")
        ):
            time.sleep(0.5)
        log = tls_federation.log("supernode-insecure")
        exited = node.poll() is not None
    finally:
        stop(node)

    # Assert: it tried (and failed) to reach the SuperLink, or gave up and exited, but never joined
    assert "SuperNode ID" not in log, f"a plain-HTTP SuperNode joined the TLS SuperLink:\n{log[-3000:]}"
    assert exited or "Connection attempt failed" in log, f"the SuperNode never dialled the SuperLink:\n{log[-3000:]}"
