"""The config a run folder was run with (its ``config.yaml``), for the commands that act on a
finished or killed run (``fedshield certify``, ``fedshield resume``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedshield.config.build import ConfigError

_ABSENT = object()


def load_run_config(run_dir: Path) -> DictConfig:
    """``run_dir/config.yaml``, checked to be a config a fedshield run wrote; a
    :class:`ConfigError` naming ``run_dir`` or ``config.yaml`` otherwise."""
    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir: {run_dir} is not a fedshield run folder: no such folder")
    if not path.is_file():
        raise ConfigError(f"run_dir: {run_dir} is not a fedshield run folder: config.yaml is missing")
    try:
        cfg = OmegaConf.load(path)
    except Exception as error:  # any YAML or OmegaConf failure: the file is not a run's config
        raise ConfigError(f"config.yaml: cannot be read as a run config ({type(error).__name__})") from error
    if not isinstance(cfg, DictConfig):
        raise ConfigError("config.yaml: must be a mapping of settings; got a list")
    for key in ("ensemble", "num_clients", "seed"):
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise ConfigError(f"config.yaml: has no {key!r}; it is not a config a fedshield run wrote")
    return cfg
