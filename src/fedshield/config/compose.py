"""Compose the Hydra configuration outside a Hydra app (``flwr run .``, ``fedshield certify``, tests)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from fedshield.config.schema import register_schema

# Package data (pyproject.toml), so a wheel or a non-editable install composes the same config.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
register_schema()  # config.yaml starts from the typed schema


def compose_config(
    overrides: Sequence[str] = (), *, config_name: str = "config", output_dir: str | Path | None = None
) -> DictConfig:
    """The config ``fedshield`` would run with these overrides; ``output_dir`` replaces Hydra's run dir."""
    from hydra import compose, initialize_config_dir

    overrides = list(overrides)
    if output_dir is not None:
        overrides.append(f"output_dir={Path(output_dir).resolve()}")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="fedshield"):
        return compose(config_name=config_name, overrides=overrides)


def split_overrides(text: str) -> list[str]:
    """``"num_rounds=2 ensemble=flcert_d"`` -> ``["num_rounds=2", "ensemble=flcert_d"]``."""
    return shlex.split(text)
