"""The digest of everything in a config that affects a job's result (checkpoint identity)."""

from __future__ import annotations

import hashlib

from omegaconf import DictConfig, OmegaConf

# Keys that do not change any job's result.
_VOLATILE_KEYS = ("output_dir", "resume", "eval_every")
_VOLATILE_ENGINE_KEYS = ("workers", "groups_per_wave", "client_resources", "ray_init_args")


def config_digest(cfg: DictConfig) -> str:
    """BLAKE2b of the resolved config without the keys that change no result."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)  # a DictConfig always converts to a dict
    for key in _VOLATILE_KEYS:
        data.pop(key, None)
    for key in _VOLATILE_ENGINE_KEYS:
        engine = data.get("engine")
        if isinstance(engine, dict):
            engine.pop(key, None)
    return hashlib.blake2b(repr(sorted(_flatten(data))).encode(), digest_size=16).hexdigest()


def _flatten(data: object, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(data, dict):
        return [item for key, value in data.items() for item in _flatten(value, f"{prefix}{key}.")]
    return [(prefix, repr(data))]
