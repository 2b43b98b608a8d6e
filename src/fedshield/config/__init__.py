"""Hydra configuration: compose it (:mod:`~fedshield.config.compose`) and turn it into an
:class:`~fedshield.experiment.Experiment` (:mod:`~fedshield.config.build`)."""

from fedshield.config.build import ConfigError, build_experiment, experiment_from_yaml
from fedshield.config.compose import CONFIG_DIR, compose_config, split_overrides
from fedshield.config.paths import with_absolute_paths

__all__ = [
    "CONFIG_DIR",
    "ConfigError",
    "build_experiment",
    "compose_config",
    "experiment_from_yaml",
    "split_overrides",
    "with_absolute_paths",
]
