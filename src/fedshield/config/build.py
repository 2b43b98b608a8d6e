"""Turn a resolved Hydra config into an :class:`~fedshield.experiment.Experiment`.

Every check that needs only the config and the data runs here, before any training.
"""

from __future__ import annotations

import functools

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedshield.attacks.selection import choose_malicious
from fedshield.data import make_federation
from fedshield.errors import UserError
from fedshield.experiment import Experiment, RunSettings
from fedshield.flip import ConfidenceRejection, FlipConfig, FlipHardening
from fedshield.task.jobs import make_jobs
from fedshield.task.training import LocalTrainingConfig

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ConfigError(UserError, ValueError):
    """The run configuration is inconsistent (a field outside its allowed range): the message
    reads ``"<dotted.field>: <what is wrong and what is allowed>; got <value>"``."""


def _check_config(cfg: DictConfig) -> None:
    if int(cfg.num_clients) < 1:
        raise ConfigError(f"num_clients must be >= 1; got {cfg.num_clients}")
    if int(cfg.num_rounds) < 1:
        raise ConfigError(f"num_rounds must be >= 1; got {cfg.num_rounds}")
    if not 0.0 < float(cfg.sample_fraction) <= 1.0:
        raise ConfigError(f"sample_fraction must be in (0, 1]; got {cfg.sample_fraction}")
    if str(cfg.precision) not in _DTYPES:
        raise ConfigError(f"precision must be one of {sorted(_DTYPES)}; got {cfg.precision!r}")
    if not float(cfg.max_update_norm) > 0:
        raise ConfigError(f"max_update_norm must be > 0; got {cfg.max_update_norm}")
    if not float(cfg.server_learning_rate) > 0:
        raise ConfigError(f"server_learning_rate must be > 0; got {cfg.server_learning_rate}")


def _check_attackers_per_round(experiment: Experiment) -> None:
    attackers = experiment.settings.attackers_per_round
    if attackers is None:
        return
    smallest = min(experiment.num_sampled(job) for job in experiment.jobs)
    if not 0 <= attackers <= smallest:
        raise ConfigError(
            f"attackers_per_round must be in [0, {smallest}] (clients sampled per round); got {attackers}"
        )
    if attackers > len(experiment.malicious_ids):
        raise ConfigError(
            f"attackers_per_round must be <= attack.num_malicious={len(experiment.malicious_ids)}; got {attackers}"
        )


def parse_device(name: str) -> torch.device:
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: must be cpu, cuda or cuda:N (any torch device); got {name!r}") from None


def local_training(cfg: DictConfig) -> LocalTrainingConfig:
    """``cfg.client`` checked against :class:`LocalTrainingConfig`'s field types."""
    try:
        typed = OmegaConf.merge(OmegaConf.structured(LocalTrainingConfig), cfg.client)
    except OmegaConfBaseException as error:
        raise ConfigError(f"client.{error.full_key}: {error.msg}") from None
    training = OmegaConf.to_object(typed)
    assert isinstance(training, LocalTrainingConfig)  # to_object of a structured config
    return training


def run_settings(cfg: DictConfig) -> RunSettings:
    return RunSettings(
        seed=int(cfg.seed),
        num_rounds=int(cfg.num_rounds),
        sample_fraction=float(cfg.sample_fraction),
        min_sampled=int(cfg.min_sampled),
        max_update_norm=float(cfg.max_update_norm),
        eval_every=int(cfg.eval_every),
        root_set_size=int(cfg.root_set_size),
        server_learning_rate=float(cfg.server_learning_rate),
        attackers_per_round=None if cfg.attackers_per_round is None else int(cfg.attackers_per_round),
    )


def build_defense(cfg: DictConfig) -> tuple[FlipHardening | None, ConfidenceRejection | None]:
    """FLIP's two sides from ``cfg.defense`` (none without a ``_target_``)."""
    defense_cfg = cfg.get("defense") or {}
    if "_target_" not in defense_cfg:
        return None, None
    flip = instantiate(defense_cfg, _convert_="all")
    if not isinstance(flip, FlipConfig):
        raise ConfigError(f"defense must instantiate a fedshield.flip.FlipConfig; got {type(flip).__name__}")
    return FlipHardening(flip), (ConfidenceRejection(flip.tau) if flip.tau > 0 else None)


def build_experiment(cfg: DictConfig) -> Experiment:
    """Load data, partition it, group clients into jobs and check every precondition up front."""
    _check_config(cfg)
    train, test = instantiate(cfg.dataset)
    federation = make_federation(
        train,
        num_clients=int(cfg.num_clients),
        scheme=str(cfg.partition.scheme),
        seed=int(cfg.seed),
        q=float(cfg.partition.get("q", 0.5)),
        alpha=float(cfg.partition.get("alpha", 0.5)),
    )
    ensemble = instantiate(cfg.ensemble)
    ensemble.check(federation.num_clients)
    groups = ensemble.groups(federation.user_ids, seed=int(cfg.seed))
    jobs = make_jobs(groups, run_seed=int(cfg.seed))
    if cfg.get("only_jobs"):  # a lone run of some groups: the same jobs, nothing else
        wanted = {int(job_id) for job_id in cfg.only_jobs}
        unknown = wanted - {job.job_id for job in jobs}
        if unknown:
            raise ConfigError(f"only_jobs names jobs {sorted(unknown)} outside [0, {len(jobs)})")
        jobs = tuple(job for job in jobs if job.job_id in wanted)
    attack = instantiate(cfg.attack, _convert_="all")
    malicious = choose_malicious(federation.user_ids, num_malicious=attack.num_malicious, seed=int(cfg.seed))
    hardening, rejection = build_defense(cfg)
    device = parse_device(str(cfg.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} but CUDA is not available; use device=cpu")
    experiment = Experiment(
        settings=run_settings(cfg),
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        train=train,
        test=test,
        federation=federation,
        jobs=jobs,
        training=local_training(cfg),
        model_builder=instantiate(cfg.model),
        rule_factory=instantiate(cfg.strategy, _partial_=True),
        ensemble=ensemble,
        attack=attack,
        hardening=hardening,
        rejection=rejection,
        malicious_ids=frozenset(malicious),
        device=device,
        dtype=_DTYPES[str(cfg.precision)],
    )
    _check_attackers_per_round(experiment)
    rule = experiment.new_rule()
    for job in jobs:  # the paper's precondition, checked when the run is built, not mid-run
        rule.check_precondition(experiment.num_sampled(job))
    return experiment


@functools.lru_cache(maxsize=4)
def experiment_from_yaml(config_yaml: str) -> Experiment:
    """Build (once per process) the experiment a Flower message or a worker describes."""
    cfg = OmegaConf.create(config_yaml)
    if not isinstance(cfg, DictConfig):
        raise ConfigError("a run config must be a mapping")
    return build_experiment(cfg)
