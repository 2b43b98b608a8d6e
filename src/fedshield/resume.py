"""``fedshield resume RUN_DIR``: finish a killed run with the config it was started with.

The run folder's ``config.yaml`` is the config; an override may change only what changes no
result (``engine.workers``, ``eval_every``, ...: the keys the checkpoint digest leaves out), so
a resumed run's groups are bit-identical to an uninterrupted run's. ``fedshield ...
resume=true output_dir=RUN_DIR`` (or ``hydra.run.dir=RUN_DIR``) composes the config from its
overrides instead and is refused when it differs from the saved one. Either way the checks run
before any file is written, and the run says how many groups were already finished.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedshield.config import ConfigError, compose_config
from fedshield.config.digest import result_differences
from fedshield.config.run_folder import load_run_config
from fedshield.run import run

_TRUE = {"true", "1", "yes"}
_FOLDER_KEYS = ("output_dir", "hydra.run.dir")


def resume_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """``run_dir``'s saved config with ``overrides`` that change no result, set to resume."""
    run_dir = Path(run_dir).resolve()
    saved = load_run_config(run_dir)
    saved_path = run_dir / "config.yaml"
    for override in overrides:
        key, equals, _ = override.partition("=")
        if not equals:
            raise ConfigError(f"{override}: an override is key=value")
        if OmegaConf.select(saved, key, default=_ABSENT) is _ABSENT:
            raise ConfigError(f"{key}: not a key of {saved_path}")
    cfg = OmegaConf.merge(saved, OmegaConf.from_dotlist(overrides))
    assert isinstance(cfg, DictConfig)  # merged onto a mapping
    for key, old, new in result_differences(saved, cfg):
        raise ConfigError(
            f"{key}: resume keeps the saved config ({old}); changing it to {new} would change the result "
            "(start a new run instead)"
        )
    cfg.resume = True
    cfg.output_dir = str(run_dir)
    return cfg


_ABSENT = object()


def resume(argv: list[str]) -> tuple[dict, str]:
    """The ``resume`` sub-command; returns the run's summary and folder."""
    parser = argparse.ArgumentParser(prog="fedshield resume", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (it holds config.yaml and jobs/)")
    parser.add_argument("overrides", nargs="*", help="settings that change no result, e.g. engine.workers=2")
    args = parser.parse_args(argv)
    cfg = resume_config(args.run_dir, args.overrides)
    return run(cfg), str(cfg.output_dir)


def asks_for_resume(overrides: list[str]) -> bool:
    """Whether a run command carries ``resume=true``."""
    return any(item.partition("=")[0] == "resume" and item.partition("=")[2].lower() in _TRUE for item in overrides)


def resume_in_place(overrides: list[str]) -> tuple[dict, str]:
    """``fedshield ... resume=true output_dir=RUN_DIR``: the config composed from the overrides,
    trained into RUN_DIR only if it is the one RUN_DIR was run with (checked in
    :func:`fedshield.run.run` before anything is written)."""
    folders = [item.partition("=")[2] for item in overrides if item.partition("=")[0] in _FOLDER_KEYS]
    if not folders:
        raise ConfigError(
            "resume: name the run folder: `fedshield resume RUN_DIR` (resume=true alone would start a new "
            "timestamped folder, with nothing to resume)"
        )
    rest = [item for item in overrides if item.partition("=")[0] not in _FOLDER_KEYS]
    run_dir = Path(folders[-1]).resolve()
    cfg = compose_config(rest, output_dir=run_dir)
    return run(cfg), str(run_dir)
