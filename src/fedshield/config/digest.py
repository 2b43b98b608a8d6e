"""The digest of everything in a config that affects a job's result (checkpoint identity)."""

from __future__ import annotations

import hashlib

from omegaconf import DictConfig, OmegaConf

# Keys that do not change any job's result.
_VOLATILE_KEYS = ("output_dir", "resume", "eval_every")
_VOLATILE_ENGINE_KEYS = (
    "workers",
    "groups_per_wave",
    "client_resources",
    "gpu_share",
    "ray_init_args",
    "address",
    "discovery_timeout",
)


def config_digest(cfg: DictConfig) -> str:
    """BLAKE2b of the resolved config without the keys that change no result."""
    return hashlib.blake2b(repr(sorted(_result_items(cfg))).encode(), digest_size=16).hexdigest()


def result_differences(saved: DictConfig, given: DictConfig) -> list[tuple[str, str | None, str | None]]:
    """``(dotted key, saved value, given value)`` for every key that changes a result and differs
    (a value of None: the key is absent on that side), sorted by key."""
    old = {key.rstrip("."): value for key, value in _result_items(saved)}
    new = {key.rstrip("."): value for key, value in _result_items(given)}
    return [
        (key, old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)
    ]


def _result_items(cfg: DictConfig) -> list[tuple[str, str]]:
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)  # a DictConfig always converts to a dict
    for key in _VOLATILE_KEYS:
        data.pop(key, None)
    for key in _VOLATILE_ENGINE_KEYS:
        engine = data.get("engine")
        if isinstance(engine, dict):
            engine.pop(key, None)
    client = data.get("client")
    if isinstance(client, dict) and client.get("device") is None:
        # client.device=null (the default: the server's device) is what every run did before the key
        # existed, so its digest stays the one of runs saved without it; a set value is kept, as
        # `device` is (CUDA's float results need not equal the CPU's).
        client.pop("device", None)
    return _flatten(data)  # keys end in "." (kept: the digest of saved checkpoints depends on it)


def _flatten(data: object, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(data, dict):
        return [item for key, value in data.items() for item in _flatten(value, f"{prefix}{key}.")]
    return [(prefix, repr(data))]
