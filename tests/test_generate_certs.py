"""scripts/generate-certs.sh: a CA and a SuperLink certificate that TLS clients accept for its names.

Each check is a real TLS handshake in memory (Python's ssl, as Flower's clients use), verified the
strict way Python 3.13 does by default (Flower's Docker images run 3.13).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "generate-certs.sh"
FILES = ("ca.crt", "ca.key", "server.pem", "server.key")

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def generate(*args: str, cwd: Path, sans: str | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "FEDSHIELD_CERT_SANS"}
    if sans is not None:
        env["FEDSHIELD_CERT_SANS"] = sans
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def handshake(certs: Path, server_name: str) -> None:
    """A TLS handshake with the SuperLink's certificate, the client trusting only ``ca.crt``."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs / "server.pem", certs / "server.key")
    client = ssl.create_default_context(cafile=str(certs / "ca.crt"))  # only this CA, not the system's
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, to_server, server_hostname=server_name)
    server_side = server.wrap_bio(to_server, to_client, server_side=True)
    pending = {client_side, server_side}
    for _ in range(20):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.discard(side)
            except ssl.SSLWantReadError:
                pass
        if not pending:
            return
    raise AssertionError("handshake did not finish")


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("certs")
    done = generate("--san", "node-a.example.org", "--san=10.0.0.7", "out", cwd=root, sans="lab-host, 192.168.5.9")
    assert done.returncode == 0, done.stderr
    return root / "out"


@pytest.mark.parametrize(
    "server_name", ["superlink", "localhost", "127.0.0.1", "node-a.example.org", "10.0.0.7", "lab-host", "192.168.5.9"]
)
def test_clients_trusting_the_ca_accept_the_superlink_under_each_name(certificates, server_name):
    handshake(certificates, server_name)


@pytest.mark.parametrize("server_name", ["superlink.evil.org", "10.0.0.8"])
def test_a_name_not_in_the_certificate_is_rejected(certificates, server_name):
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(certificates, server_name)


def test_a_client_trusting_another_ca_rejects_the_superlink(certificates, tmp_path):
    assert generate("other", cwd=tmp_path).returncode == 0
    shutil.copy(tmp_path / "other" / "ca.crt", tmp_path / "ca.crt")
    for name in ("server.pem", "server.key"):
        shutil.copy(certificates / name, tmp_path / name)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tmp_path, "superlink")


def test_private_keys_are_readable_by_their_owner_only(certificates):
    for name in ("ca.key", "server.key"):
        assert (certificates / name).stat().st_mode & 0o077 == 0, name


def test_default_folder_is_certificates_and_existing_certificates_are_kept_unless_forced(tmp_path):
    assert generate(cwd=tmp_path).returncode == 0
    folder = tmp_path / "certificates"
    before = digests(folder)

    refused = generate(cwd=tmp_path)
    assert refused.returncode != 0 and "--force" in refused.stderr
    assert digests(folder) == before

    assert generate("--force", cwd=tmp_path).returncode == 0
    after = digests(folder)
    assert all(after[name] != before[name] for name in FILES)
    assert sorted(path.name for path in folder.iterdir()) == sorted(FILES), "no scratch files left behind"


def test_certificates_are_ignored_by_git_and_docker():
    git = shutil.which("git")
    if git and (REPO_ROOT / ".git").exists():
        ignored = subprocess.run([git, "check-ignore", "-q", "certificates/ca.key"], cwd=REPO_ROOT)
        assert ignored.returncode == 0, "git must ignore ./certificates"
    assert "certificates" in (REPO_ROOT / ".dockerignore").read_text().split()
