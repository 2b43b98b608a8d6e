"""Turn a resolved Hydra config into an :class:`~fedshield.experiment.Experiment`.

Every check that needs only the config and the data runs here, before any training.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedshield.attacks.base import AttackError
from fedshield.attacks.selection import choose_malicious
from fedshield.data import Federation, make_federation
from fedshield.errors import UserError
from fedshield.experiment import Experiment, RunSettings
from fedshield.flip import ConfidenceRejection, FlipConfig, FlipHardening
from fedshield.rules import ByzantineBudgetError
from fedshield.task.devices import check_client_device
from fedshield.task.jobs import JobSpec, make_jobs
from fedshield.task.training import LocalTrainingConfig

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Rule parameters that bound how many attackers the rule withstands (Krum's f, Trimmed mean's b).
_ASSUMED_ATTACKERS_FIELDS = ("num_malicious", "num_trimmed")

logger = logging.getLogger(__name__)


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


def _check_target_label(experiment: Experiment) -> None:
    """A backdoor's target must be one of the dataset's labels (else its ASR is silently 0)."""
    target, num_labels = experiment.attack.target_label, experiment.test.num_classes
    if target is not None and not 0 <= target < num_labels:
        raise ConfigError(f"attack.target_label: must be in [0, {num_labels}) (the dataset's labels); got {target}")


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
    budget = {key: value for key, value in cfg.client.items() if key != "device"}  # client.device: not SGD
    try:
        typed = OmegaConf.merge(OmegaConf.structured(LocalTrainingConfig), budget)
    except OmegaConfBaseException as error:
        raise ConfigError(f"client.{error.full_key}: {error.msg}") from None
    training = OmegaConf.to_object(typed)
    assert isinstance(training, LocalTrainingConfig)  # to_object of a structured config
    return training


def clients_without_samples(federation: Federation) -> frozenset[int]:
    """User IDs of the clients the partition gave no sample (Fang or Dirichlet with many clients)."""
    return frozenset(
        uid for uid, indices in zip(federation.user_ids, federation.indices, strict=True) if not len(indices)
    )


def exclude_clients_without_samples(
    jobs: tuple[JobSpec, ...], empty: frozenset[int], *, cfg: DictConfig, log_warnings: bool = True
) -> tuple[JobSpec, ...]:
    """The jobs without the clients in ``empty``: they have nothing to train on and send nothing.

    Each job keeps its id and seed (so its sampling stream), and with no empty client the jobs
    are returned as they are. A job left with no client is refused.
    """
    if not empty:
        return jobs
    kept = []
    for job in jobs:
        clients = tuple(uid for uid in job.client_ids if uid not in empty)
        if not clients:
            raise ConfigError(
                f"partition: job {job.job_id} holds only clients without samples ({len(job.client_ids)} of them), "
                "and a job needs at least one client with samples; use fewer clients, fewer groups or more data; "
                f"got partition.scheme={cfg.partition.scheme} with num_clients={cfg.num_clients}"
            )
        kept.append(dataclasses.replace(job, client_ids=clients))
    if log_warnings:
        logger.warning("partition: %d of %d clients have no samples and take no part", len(empty), cfg.num_clients)
    return tuple(kept)


def default_assumed_attackers(strategy: DictConfig, *, num_malicious: int) -> int | None:
    """The f to fill in for ``strategy.num_malicious: null`` (Krum, Multi-Krum, Bulyan); None if set.

    f defaults to ``attack.num_malicious``, the federation's attacker count (an assumption the
    server makes about the whole federation, not about which clients a group happens to hold),
    but at least 1, the former default, so that a run without attack keeps f = 1.
    """
    if "num_malicious" not in strategy or strategy.num_malicious is not None:
        return None
    return max(1, num_malicious)


def warn_if_rule_assumes_fewer_attackers(strategy: DictConfig, *, num_malicious: int) -> None:
    """One warning line when the rule withstands fewer attackers than the attack has."""
    for field in _ASSUMED_ATTACKERS_FIELDS:
        assumed = strategy.get(field)
        if assumed is not None and int(assumed) < num_malicious:
            logger.warning(
                "strategy.%s=%d is fewer than attack.num_malicious=%d: the rule assumes fewer attackers than "
                "the attack has",
                field,
                int(assumed),
                num_malicious,
            )


def most_attackers_sampled(experiment: Experiment, job: JobSpec) -> int:
    """The most malicious clients one round of ``job`` can sample.

    Uniform sampling can draw all of the job's attackers up to the sample size; with
    ``attackers_per_round`` the count of :func:`fedshield.server.rounds.sample_with_attackers`.
    """
    num_sampled = experiment.num_sampled(job)
    attackers = sum(1 for uid in job.client_ids if experiment.is_malicious(uid))
    wanted = experiment.settings.attackers_per_round
    if wanted is None:
        return min(attackers, num_sampled)
    benign = len(job.client_ids) - attackers
    return num_sampled - min(num_sampled - min(wanted, attackers, num_sampled), benign)


def check_attack_budget(experiment: Experiment) -> None:
    """The attack's precondition (Krum attack: n >= 2c + 3) in the worst round of every job."""
    for job in experiment.jobs:
        num_sampled = experiment.num_sampled(job)
        attackers = most_attackers_sampled(experiment, job)
        try:
            experiment.attack.check_precondition(num_sampled=num_sampled, num_attackers=attackers)
        except AttackError as error:
            raise ConfigError(
                f"attack.num_malicious: job {job.job_id} samples {num_sampled} clients per round, up to {attackers} "
                f"of them attackers; {error}"
            ) from error


def check_rule_budget(experiment: Experiment) -> None:
    """The rule's precondition (e.g. Krum: n >= 2f + 3) on the clients every job samples per round."""
    rule = experiment.new_rule()
    for job in experiment.jobs:
        try:
            rule.check_precondition(experiment.num_sampled(job))
        except ByzantineBudgetError as error:
            raise ConfigError(f"strategy: job {job.job_id} samples too few clients per round; {error}") from error


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


def client_device_name(cfg: DictConfig) -> str | None:
    """``client.device``, checked for form only: whether CUDA is there is the client worker's concern."""
    name = cfg.client.get("device")
    name = None if name is None else str(name)
    check_client_device(name)
    return name


def selected_jobs(jobs: tuple[JobSpec, ...], only_jobs: Sequence[int] | None) -> tuple[JobSpec, ...]:
    """The jobs a run trains: all, or the ``only_jobs`` of a lone run of some groups (the same
    jobs, nothing else)."""
    if not only_jobs:
        return jobs
    wanted = {int(job_id) for job_id in only_jobs}
    unknown = wanted - {job.job_id for job in jobs}
    if unknown:
        raise ConfigError(f"only_jobs names jobs {sorted(unknown)} outside [0, {len(jobs)})")
    return tuple(job for job in jobs if job.job_id in wanted)


def build_experiment(
    cfg: DictConfig, *, log_warnings: bool = True, serves: bool = True, loaded_by: Experiment | None = None
) -> Experiment:
    """Load data, partition it, group clients into jobs and check every precondition up front.

    ``log_warnings=False`` keeps the processes that rebuild the run (workers, Flower clients)
    from repeating the warnings the run's own process logged. ``serves=False`` (a Flower client's
    process) skips the check that the server's ``device`` exists here: only the clients compute there.
    ``loaded_by``: an experiment built in this process (the CLI's preflight) whose data is reused
    if its ``dataset`` section equals this config's (loading is most of the build: ~2-3 s for mnist5k).
    """
    _check_config(cfg)
    train, test = _dataset(cfg, loaded_by)
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
    # Groups are drawn from every client, so a client with samples is in the same group whether
    # or not others are empty; the empty ones are then left out of their groups.
    groups = ensemble.groups(federation.user_ids, seed=int(cfg.seed))
    jobs = selected_jobs(make_jobs(groups, run_seed=int(cfg.seed)), cfg.get("only_jobs"))
    empty = clients_without_samples(federation)
    jobs = exclude_clients_without_samples(jobs, empty, cfg=cfg, log_warnings=log_warnings)
    attack = instantiate(cfg.attack, _convert_="all")
    # Attackers are clients that take part: with no empty client, the same choice as ever.
    trainable = tuple(uid for uid in federation.user_ids if uid not in empty)
    malicious = choose_malicious(trainable, num_malicious=attack.num_malicious, seed=int(cfg.seed))
    assumed = default_assumed_attackers(cfg.strategy, num_malicious=attack.num_malicious)
    if assumed is not None:  # the run folder's config.yaml then records the f the rule runs with
        merged = OmegaConf.merge(cfg, {"strategy": {"num_malicious": assumed}})
        assert isinstance(merged, DictConfig)  # merging into a mapping gives a mapping
        cfg = merged
    if log_warnings:
        warn_if_rule_assumes_fewer_attackers(cfg.strategy, num_malicious=attack.num_malicious)
    hardening, rejection = build_defense(cfg)
    device = parse_device(str(cfg.device))
    if serves and device.type == "cuda" and not torch.cuda.is_available():
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
        client_device_name=client_device_name(cfg),
    )
    _check_target_label(experiment)
    _check_attackers_per_round(experiment)
    check_attack_budget(experiment)
    check_rule_budget(experiment)  # the paper's precondition, checked when the run is built, not mid-run
    return experiment


def _dataset(cfg: DictConfig, loaded_by: Experiment | None) -> tuple:
    """The (train, test) split ``cfg.dataset`` describes: ``loaded_by``'s if it was built from
    the same (resolved) dataset section, else loaded."""
    if loaded_by is not None:
        loaded_cfg = OmegaConf.create(loaded_by.config_yaml)  # resolved when it was built
        if OmegaConf.to_container(loaded_cfg.dataset) == OmegaConf.to_container(cfg.dataset, resolve=True):
            return loaded_by.train, loaded_by.test
    return instantiate(cfg.dataset)


@functools.lru_cache(maxsize=4)
def experiment_from_yaml(config_yaml: str, *, serves: bool = True) -> Experiment:
    """Build (once per process) the experiment a Flower message or a worker describes
    (``serves=False``: a process that only runs clients, see :func:`build_experiment`)."""
    cfg = OmegaConf.create(config_yaml)
    if not isinstance(cfg, DictConfig):
        raise ConfigError("a run config must be a mapping")
    return build_experiment(cfg, log_warnings=False, serves=serves)
