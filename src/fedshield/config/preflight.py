"""Check a ``fedshield`` command's runs before Hydra creates a folder or anything trains.

Every run the command asks for (each combination of a ``--multirun`` sweep) is composed and
built (:func:`~fedshield.config.build.build_experiment`: data, partition, groups, rule and attack
preconditions), so a user's mistake is one line before any file is written, not a traceback
minutes into training.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from fedshield.config.build import ConfigError, build_experiment
from fedshield.config.compose import compose_config
from fedshield.config.paths import with_absolute_paths
from fedshield.errors import UserError
from fedshield.experiment import Experiment

# output_dir of a run being checked: resolved into the config, never created.
_UNWRITTEN_OUTPUT = Path(tempfile.gettempdir()) / "fedshield-preflight-never-written"


def sweep_runs(overrides: Sequence[str]) -> list[list[str]]:
    """The override lists of a sweep's runs, as Hydra's basic sweeper forms them (cartesian
    product of the comma/range sweeps, in order)."""
    choices = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ConfigError(
                    f"{key}: only discrete sweeps (a,b or range()) are supported; got {override.input_line}"
                )
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([str(override.input_line)])
    return [list(run) for run in itertools.product(*choices)]


def check_runs(overrides: Sequence[str], *, multirun: bool = False) -> int:
    """Build every run of the command; raise the first user error. Returns how many were checked."""
    runs = sweep_runs(overrides) if multirun else [list(overrides)]
    for run in runs:
        check_run(run)
    return len(runs)


def check_run(overrides: Sequence[str]) -> Experiment:
    """Build one run; raise its user error. The experiment it returns serves only to hand its
    loaded data to the run (``run(cfg, checked=...)``): its output_dir is not the run's."""
    named = any(item.split("=", 1)[0].lstrip("+~") == "output_dir" for item in overrides)
    # Paths made absolute as run() makes them, so the data is read from where the run reads it.
    cfg = with_absolute_paths(compose_config(overrides, output_dir=None if named else _UNWRITTEN_OUTPUT))
    try:
        return build_experiment(cfg, log_warnings=False)  # the run itself warns, once
    except UserError:
        raise
    except ValueError as error:  # a domain check (ensemble, attack, FLIP) refusing a setting
        raise ConfigError(str(error)) from error
