"""The clients' torch device (``client.device``), resolved where a client runs, not on the driver.

``device`` is the server's (evaluation, aggregation, FLTrust's root update); ``client.device`` is
what local training uses:

- ``null``: the same as ``device``;
- ``cpu``;
- ``cuda`` or ``cuda:N``: CUDA, and a client whose worker has no CUDA device fails with one line
  naming ``client.device`` (under Ray a client sees a GPU only when Ray gives it one:
  ``engine.client_resources.num_gpus > 0``);
- ``auto``: CUDA when the client's worker has a CUDA device, else the CPU.

Only where the clients compute moves: on the CPU the results are bit for bit those of ``cpu``.
"""

from __future__ import annotations

import socket

import torch

from fedshield.errors import UserError

AUTO = "auto"
_ALLOWED = "null (same as device), auto (CUDA if the client's worker has one, else CPU), cpu, cuda or cuda:N"


class ClientDeviceError(UserError, ValueError):
    """``client.device`` is malformed, or names CUDA on a worker without it."""


def check_client_device(name: str | None) -> None:
    """Refuse a malformed ``client.device`` (on the driver; CUDA itself is checked on the worker)."""
    if name is None or name == AUTO:
        return
    try:
        torch.device(name)
    except RuntimeError:
        raise ClientDeviceError(f"client.device: must be {_ALLOWED}; got {name!r}") from None


def resolve_client_device(name: str | None, server_device: torch.device) -> torch.device:
    """The device this process's clients train on (call it in the process that trains them)."""
    check_client_device(name)
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = server_device if name is None else torch.device(name)
    if device.type != "cuda":
        return device
    got = f"{name!r}" if name is not None else f"null (device={str(server_device)!r})"
    if not torch.cuda.is_available():
        raise ClientDeviceError(
            f"client.device: CUDA, but the client's worker ({socket.gethostname()}) has no CUDA device (under Ray a "
            "client gets one only with engine.client_resources.num_gpus > 0); use client.device=auto to fall back "
            f"to the CPU, or cpu; got {got}"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ClientDeviceError(
            f"client.device: the client's worker ({socket.gethostname()}) has {torch.cuda.device_count()} CUDA "
            f"device(s); got {got}"
        )
    return device
