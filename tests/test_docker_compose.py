"""docker-compose.yml, its TLS overlay and Dockerfile: a federation that matches this checkout.

No Docker engine is needed: the files are parsed with PyYAML (the overlay merged onto the base as
Compose merges them), and validated by ``docker compose config -q`` (or ``docker-compose``) when a
Compose client is installed (neither needs a daemon).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from fedshield.config import build_experiment, compose_config, split_overrides

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
TLS_OVERLAY_FILE = REPO_ROOT / "docker-compose.tls.yml"
FLWR_VERSION = version("flwr")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def _argv(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def _option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def _supernodes(services: dict[str, dict]) -> dict[str, dict]:
    return {name: s for name, s in services.items() if s.get("entrypoint") == ["flower-supernode"]}


def _pins(requirements: list[str]) -> dict[str, str]:
    """``{"torch": "==2.14.1", ...}`` from PEP 508 requirement strings."""
    return {Requirement(line).name: str(Requirement(line).specifier) for line in requirements}


def test_superlink_runs_the_serverapp_as_a_subprocess_on_a_published_port(services):
    superlink = services["superlink"]
    argv = _argv(superlink)
    assert superlink["entrypoint"] == ["flower-superlink"]
    assert "--insecure" in argv and _option(argv, "--isolation") == "subprocess"
    assert _option(argv, "--host") == "0.0.0.0", "other containers must reach the SuperLink"
    port = _option(argv, "--port")
    assert f"{port}:{port}" in [str(p) for p in superlink["ports"]], "flwr run on the host needs the port"


def test_supernodes_are_pool_nodes_of_the_superlink_on_distinct_ports(services):
    supernodes = _supernodes(services)
    superlink_port = _option(_argv(services["superlink"]), "--port")
    assert len(supernodes) >= 2
    ports = set()
    for name, node in supernodes.items():
        argv = _argv(node)
        assert "--insecure" in argv and _option(argv, "--isolation") == "subprocess", name
        assert _option(argv, "--superlink") == f"superlink:{superlink_port}", name
        assert "superlink" in node["depends_on"], name
        assert "--node-config" not in argv, f"{name}: a pool node has no partition-id, it serves any client"
        ports.add(_option(argv, "--port"))
    assert len(ports) == len(supernodes)


def test_images_pin_the_installed_flower_version_and_build_from_our_dockerfile(services):
    expected_base = {"superlink": "flwr/superlink"}
    for name, service in services.items():
        image = str(service.get("image", ""))
        if image.startswith("flwr/"):
            assert image.split(":", 1)[1].startswith(FLWR_VERSION), (
                f"{name}: {image} is not pinned to flwr {FLWR_VERSION}"
            )
            continue
        build = service["build"]
        assert (REPO_ROOT / build["context"] / build["dockerfile"]).is_file(), name
        assert str(build["args"]["FLWR_VERSION"]) == FLWR_VERSION, name
        assert build["args"]["FLWR_IMAGE"] == expected_base.get(name, "flwr/supernode"), name


def test_dockerfile_pins_the_same_versions_as_pyproject():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pins = _pins(pyproject["project"]["dependencies"])
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(rf"^ARG FLWR_VERSION={re.escape(FLWR_VERSION)}$", dockerfile, re.M)
    assert Requirement(f"flwr{pins['flwr']}").specifier.contains(FLWR_VERSION), "pyproject's flwr pin vs installed"
    for package in ("torch", "torchvision"):
        assert pins[package].startswith("=="), f"pyproject.toml must pin {package}"
        assert f"{package}{pins[package]}" in dockerfile.split(), f"Dockerfile must install {package}{pins[package]}"
    assert (REPO_ROOT / ".dockerignore").read_text().count(".venv") >= 1, "keep .venv out of the build context"


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """``{target: (source, read_only)}`` of a service's volumes, short or long syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts[volume["target"]] = (str(volume.get("source", "")), bool(volume.get("read_only", False)))
            continue
        # SOURCE:TARGET[:MODE], where SOURCE may be ${VAR:-default} (a colon inside)
        parsed = re.fullmatch(r"(\$\{[^}]*\}[^:]*|[^:]+):([^:]+)(?::(.+))?", str(volume))
        assert parsed, f"unreadable volume {volume}"
        source, target, mode = parsed.groups()
        mounts[target] = (source, "ro" in (mode or "").split(","))
    return mounts


def test_every_fedshield_container_reads_datasets_from_a_read_only_host_folder(services):
    fedshield_services = {"superlink", *_supernodes(services)}
    for name in fedshield_services:
        service = services[name]
        data_dir = service["environment"].get("FEDSHIELD_DATA")
        assert data_dir and data_dir.startswith("/"), f"{name}: FEDSHIELD_DATA must name the mount point"
        mounts = _mounts(service)
        assert data_dir in mounts, f"{name}: nothing is mounted at FEDSHIELD_DATA={data_dir}"
        source, read_only = mounts[data_dir]
        assert read_only, f"{name}: the data volume must be read-only"
        # The host folder comes from an environment variable, with a default when it is unset.
        variable = re.fullmatch(r"\$\{(\w+):-([^}]+)\}", source)
        assert variable, f"{name}: the data volume's host path must be ${{VAR:-default}}; got {source}"
        assert variable.group(1) == "FEDSHIELD_DATA", "the host's FEDSHIELD_DATA, as outside Docker"
    assert "data" in (REPO_ROOT / ".dockerignore").read_text().split(), "keep the datasets out of the build context"


def test_dockerfile_declares_that_it_needs_buildkit():
    lines = (REPO_ROOT / "Dockerfile").read_text().splitlines()
    assert re.fullmatch(r"# syntax=docker/dockerfile:1(\.\d+)*", lines[0]), "the syntax directive must come first"
    assert any("BuildKit" in line for line in lines[1:10] if line.startswith("#"))


def test_the_flcert_run_waits_for_every_supernode_serves_hundreds_of_clients_and_composes(services, tmp_path):
    launcher = services["flcert-d"]
    overrides = split_overrides(launcher["environment"]["FEDSHIELD_OVERRIDES"])
    assert f"engine.min_nodes={len(_supernodes(services))}" in overrides
    num_clients = int(next(o for o in overrides if o.startswith("num_clients=")).split("=")[1])
    assert num_clients >= 100 * len(_supernodes(services)) // 2, "a few SuperNodes serve hundreds of clients"
    assert "ensemble=flcert_d" in overrides
    assert {"superlink", *_supernodes(services)} <= set(launcher["depends_on"])
    experiment = build_experiment(compose_config(overrides, output_dir=tmp_path))
    assert len(experiment.jobs) >= 2 and all(job.client_ids for job in experiment.jobs)


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_client_accepts_the_file():
    client = _compose_client()
    if client is None:
        pytest.skip("no Docker Compose client (docker compose / docker-compose) installed")
    done = subprocess.run(
        [*client, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_compose_client_accepts_the_file_with_the_tls_overlay(tmp_path):
    client = _compose_client()
    if client is None:
        pytest.skip("no Docker Compose client (docker compose / docker-compose) installed")
    files = ["-f", str(COMPOSE_FILE), "-f", str(TLS_OVERLAY_FILE)]
    done = subprocess.run(
        [*client, *files, "config", "-q"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FEDSHIELD_CERTS": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr


# --- docker-compose.tls.yml merged onto docker-compose.yml ------------------------------------------

# Compose's merge rules for the keys the overlay uses (docs.docker.com/compose/multiple-compose-files/merge):
# `command` and `entrypoint` are replaced, `volumes` merged by container path, mappings merged key by key.
REPLACED = {"command", "entrypoint"}


def _merge_service(base: dict, overlay: dict) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        if key in REPLACED or key not in base:
            merged[key] = value
        elif key == "volumes":
            by_target = {target: volume for volume in base[key] for target in _mounts({"volumes": [volume]})}
            by_target.update({target: volume for volume in value for target in _mounts({"volumes": [volume]})})
            merged[key] = list(by_target.values())
        elif isinstance(value, dict) and isinstance(base[key], dict):
            merged[key] = {**base[key], **value}
        else:
            raise NotImplementedError(f"merging {key!r} is not modelled here; extend _merge_service")
    return merged


@pytest.fixture(scope="module")
def tls_overlay() -> dict:
    return yaml.safe_load(TLS_OVERLAY_FILE.read_text())


@pytest.fixture(scope="module")
def tls_services(services, tls_overlay) -> dict[str, dict]:
    overrides = tls_overlay["services"]
    return {name: _merge_service(service, overrides.get(name, {})) for name, service in services.items()}


def _mounted_certificate(service: dict, path: str, file_name: str) -> None:
    """``path`` is a read-only mount of ``file_name`` from the host's certificates folder."""
    mounts = _mounts(service)
    assert path in mounts, f"nothing is mounted at {path}"
    source, read_only = mounts[path]
    assert read_only, f"{path} must be mounted read-only"
    assert source == f"${{FEDSHIELD_CERTS:-./certificates}}/{file_name}", f"{path} comes from {source}"


def _flwr_connection(service: dict) -> tuple[dict, str]:
    """The ``config.toml`` a launcher script writes (its printf) and the command it then runs."""
    script = _argv(service)[-1]
    printed = re.search(r"printf '([^']*)' > \"\$\$FLWR_HOME/config.toml\"", script)
    assert printed, f"no config.toml written by {script!r}"
    config = tomllib.loads(printed.group(1).encode().decode("unicode_escape"))
    connection = config["superlink"][config["superlink"]["default"]]
    (run_line,) = [line for line in script.splitlines() if line.startswith("exec flwr run")]
    return connection, run_line


def test_tls_overlay_names_only_services_of_the_base_file(services, tls_overlay):
    unknown = set(tls_overlay["services"]) - set(services)
    assert not unknown, f"the overlay would add services {unknown} instead of overriding them"


def test_no_service_runs_insecure_with_the_tls_overlay(tls_services):
    for name, service in tls_services.items():
        assert "--insecure" not in _argv(service), f"{name} still runs with --insecure"
        script = " ".join(_argv(service))
        assert "insecure" not in script, f"{name} still mentions insecure"


def test_tls_superlink_serves_with_mounted_certificates_and_keeps_its_other_options(services, tls_services):
    argv = _argv(tls_services["superlink"])
    expected_files = {"--ssl-ca-certfile": "ca.crt", "--ssl-certfile": "server.pem", "--ssl-keyfile": "server.key"}
    for option, file_name in expected_files.items():
        _mounted_certificate(tls_services["superlink"], _option(argv, option), file_name)
        del argv[argv.index(option) : argv.index(option) + 2]
    assert argv == [arg for arg in _argv(services["superlink"]) if arg != "--insecure"]


def test_tls_supernodes_trust_the_mounted_ca_and_keep_their_other_options(services, tls_services):
    supernodes = _supernodes(services)
    for name in supernodes:
        argv = _argv(tls_services[name])
        _mounted_certificate(tls_services[name], _option(argv, "--root-certificates"), "ca.crt")
        del argv[argv.index("--root-certificates") : argv.index("--root-certificates") + 2]
        assert argv == [arg for arg in _argv(services[name]) if arg != "--insecure"], f"{name} differs from the base"
        assert _mounts(tls_services[name]).keys() >= _mounts(services[name]).keys(), f"{name} lost a base volume"


def test_the_ca_key_is_mounted_nowhere(tls_services):
    for name, service in tls_services.items():
        sources = [source for source, _ in _mounts(service).values()]
        assert not any(source.endswith("ca.key") for source in sources), f"{name} mounts the CA's private key"


def test_tls_flcert_run_trusts_the_mounted_ca_and_submits_the_same_run(services, tls_services):
    superlink_port = _option(_argv(services["superlink"]), "--port")
    connection, run_line = _flwr_connection(tls_services["flcert-d"])
    base_connection, base_run_line = _flwr_connection(services["flcert-d"])
    assert connection["address"] == base_connection["address"] == f"superlink:{superlink_port}"
    assert "insecure" not in connection, "root-certificates and insecure are exclusive for flwr"
    _mounted_certificate(tls_services["flcert-d"], connection["root-certificates"], "ca.crt")
    assert run_line == base_run_line
    assert tls_services["flcert-d"]["entrypoint"] == services["flcert-d"]["entrypoint"]
