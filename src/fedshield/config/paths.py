"""Paths in a config, made absolute once on the driver, against the folder the user launched from.

Worker processes (Ray, the local engine's pool, Flower ClientApps) rebuild the experiment from the
serialized config and may run in another working directory, so ``dataset.root=data/mnist`` or
``output_dir=runs/a`` must not reach them relative.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Config keys that hold a path the user may give relative to where they launched the command.
PATH_KEYS = ("dataset.root", "output_dir")


def launch_dir() -> Path:
    """The folder the command was started in: Hydra's original cwd inside a Hydra app (which
    differs from the cwd under ``hydra.job.chdir=true``), else the current directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    return Path(get_original_cwd() if HydraConfig.initialized() else os.getcwd())


def absolute(path: str, base: Path) -> str:
    """``path`` joined to ``base`` if relative. ``~/...`` stays as it is: each machine that reads
    the data expands it to its own home."""
    if path.startswith("~") or Path(path).is_absolute():
        return path
    return os.path.normpath(base / path)


def with_absolute_paths(cfg: DictConfig, base: Path | None = None) -> DictConfig:
    """A copy of ``cfg`` whose :data:`PATH_KEYS` are absolute (relative ones joined to ``base``,
    :func:`launch_dir` by default); other keys, and interpolations into these (``attack.root:
    ${dataset.root}``), are unchanged."""
    base = launch_dir() if base is None else base
    resolved = copy.deepcopy(cfg)
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None:
            OmegaConf.update(resolved, key, absolute(str(value), base), merge=False)
    return resolved
