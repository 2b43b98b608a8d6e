"""The typed top level of ``conf/config.yaml``, a Hydra structured config (ConfigStore).

Hydra checks every override of these fields against its type before anything runs:
``num_rounds=abc`` is refused as ``num_rounds: Value 'abc' ... could not be converted to Integer``.
Ranges (``num_rounds >= 1``, ``sample_fraction`` in (0, 1], ...) are checked in
:mod:`fedshield.config.build`; the config groups (dataset, model, ...) keep their own schemas,
their ``_target_``'s signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

SCHEMA_NAME = "fedshield_schema"


@dataclass
class RunSchema:
    # The config groups: a mapping each, checked by the target they instantiate.
    dataset: Any = None
    partition: Any = None
    model: Any = None
    client: Any = None
    strategy: Any = None
    attack: Any = None
    defense: Any = None
    ensemble: Any = None
    engine: Any = None
    # The run's own fields (documented in conf/config.yaml).
    seed: int = 0
    num_clients: int = 50
    num_rounds: int = 20
    sample_fraction: float = 0.2
    min_sampled: int = 1
    device: str = "cpu"
    precision: str = "float32"
    max_update_norm: float = 1.0e6
    server_learning_rate: float = 1.0
    attackers_per_round: int | None = None
    eval_every: int = 1
    root_set_size: int = 100
    only_jobs: list[int] | None = None
    resume: bool = False
    output_dir: str = "${hydra:runtime.output_dir}"


def register_schema() -> None:
    """Make ``- fedshield_schema`` in config.yaml's defaults list resolve to :class:`RunSchema`."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunSchema)
