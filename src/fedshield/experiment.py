"""The typed description of a run that both roles and both drivers work from.

An :class:`Experiment` holds everything that affects the math: data, federation, jobs, model,
rule, attack, defense, and the run's settings. It is built once per process from the resolved
config (:func:`fedshield.config.build_experiment`), so the Flower apps, the in-process engine
and every Flower client process share one source of truth. Its fields are explicit: nothing
is probed with ``getattr``.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedshield.attacks.base import Attack
from fedshield.data import ArrayDataset, Federation
from fedshield.ensembles import Ensemble
from fedshield.flip.rejection import ConfidenceRejection
from fedshield.models.params import set_flat_params
from fedshield.rules import AggregationRule
from fedshield.task.defense import ClientDefense
from fedshield.task.determinism import derive_seed
from fedshield.task.devices import resolve_client_device
from fedshield.task.jobs import JobSpec
from fedshield.task.training import LocalTrainingConfig


@dataclass(frozen=True)
class RunSettings:
    """The run's top-level settings (``fedshield/conf/config.yaml``) that the math reads.

    Attributes
    ----------
    seed : int
        Root of every seed (:func:`~fedshield.task.determinism.derive_seed`).
    num_rounds : int
        Global rounds T of every job.
    sample_fraction : float
        beta: share of a job's clients sampled each round.
    min_sampled : int
        At least this many clients per round (at most all of the job's).
    max_update_norm : float
        Replies with a larger L2 norm are dropped and logged.
    eval_every : int
        Evaluate each job's model every k rounds (0: only after the last round).
    root_set_size : int
        Size of FLTrust's clean root set.
    server_learning_rate : float
        Global step eta: the new global model is ``global + eta * aggregate``.
    attackers_per_round : int or None
        When set, every round in which the attack is active samples exactly this many of a
        job's malicious clients (FLIP's protocol: 4 of 10); None samples uniformly.
    """

    seed: int
    num_rounds: int
    sample_fraction: float
    min_sampled: int = 1
    max_update_norm: float = 1.0e6
    eval_every: int = 1
    root_set_size: int = 100
    server_learning_rate: float = 1.0
    attackers_per_round: int | None = None


@dataclass(frozen=True)
class Experiment:
    settings: RunSettings
    config_yaml: str
    train: ArrayDataset
    test: ArrayDataset
    federation: Federation
    jobs: tuple[JobSpec, ...]
    training: LocalTrainingConfig
    model_builder: Callable[..., nn.Module]
    rule_factory: Callable[[], AggregationRule]
    ensemble: Ensemble
    attack: Attack
    malicious_ids: frozenset[int]
    device: torch.device  # the server's: evaluation, aggregation, FLTrust's root update
    dtype: torch.dtype
    client_device_name: str | None = None  # client.device as written; see fedshield.task.devices
    hardening: ClientDefense | None = None  # client side of a defense (FLIP's hardening)
    rejection: ConfidenceRejection | None = None  # server side (FLIP's tau)
    _client_tensors: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    _work_models: dict[int, tuple[nn.Module, dict[str, torch.Tensor], list[bool]]] = field(
        default_factory=dict, repr=False
    )

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def num_rounds(self) -> int:
        return self.settings.num_rounds

    @functools.cached_property
    def job_by_id(self) -> dict[int, JobSpec]:
        return {job.job_id: job for job in self.jobs}

    @functools.cached_property
    def client_device(self) -> torch.device:
        """Where this process trains clients: ``client.device`` resolved here, on first use (so a
        driver without CUDA can run clients on GPU workers)."""
        return resolve_client_device(self.client_device_name, self.device)

    def new_model(self, device: torch.device | None = None) -> nn.Module:
        """A fresh module on ``device`` (default: the server's)."""
        model = self.model_builder(input_shape=self.train.input_shape, num_classes=self.train.num_classes)
        return model.to(device=self.device if device is None else device, dtype=self.dtype)

    def work_model(self, params: torch.Tensor) -> nn.Module:
        """``new_model(client_device)`` loaded with ``params``, but one module reused per thread.

        Building the CNN took 0.5 to 1 ms per client update (7% of the engine's time at
        N = 50, bench/README.md), so client updates reuse this thread's module, reset each call
        to a fresh module's state: every float entry from ``params``, integer buffers at their
        initial values, no gradients, the initial ``requires_grad`` flags, train mode. Do not
        keep it past the call.
        """
        thread = threading.get_ident()
        if thread not in self._work_models:
            model = self.new_model(self.client_device)
            integers = {name: t.clone() for name, t in model.state_dict().items() if not t.is_floating_point()}
            self._work_models[thread] = (model, integers, [p.requires_grad for p in model.parameters()])
        model, integers, requires_grad = self._work_models[thread]
        for parameter, flag in zip(model.parameters(), requires_grad, strict=True):
            parameter.grad = None
            parameter.requires_grad_(flag)
        if integers:
            state = model.state_dict()
            with torch.no_grad():
                for name, value in integers.items():
                    state[name].copy_(value)
        set_flat_params(model, params)
        return model.train()

    def model_from_params(self, params: torch.Tensor) -> nn.Module:
        """A fresh module holding ``params`` (for evaluation and saving)."""
        model = self.new_model()
        set_flat_params(model, params)
        return model

    def initial_model(self, job: JobSpec) -> nn.Module:
        """The job's seeded initial model (global RNG untouched)."""
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (where modules initialize): torch.manual_seed would also
            # queue lazy seeding of CUDA, XPU and MTIA, each saving a stack trace (0.4 ms a job).
            torch.default_generator.manual_seed(derive_seed("init", job.seed))
            return self.new_model()

    def tensors(self, dataset: ArrayDataset, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``dataset`` as tensors on ``device`` (default: the server's)."""
        device = self.device if device is None else device
        x = torch.from_numpy(dataset.x).to(device)
        if x.is_floating_point():  # token IDs (text) stay integers
            x = x.to(self.dtype)
        return x, torch.from_numpy(dataset.y).to(device)

    def client_tensors(self, user_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        if user_id not in self._client_tensors:
            subset = self.train.subset(self.federation.indices_of(user_id))
            self._client_tensors[user_id] = self.tensors(subset, self.client_device)
        return self._client_tensors[user_id]

    def num_examples(self, user_id: int) -> int:
        return len(self.federation.indices_of(user_id))

    @functools.cached_property
    def root_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """FLTrust's clean root set: ``root_set_size`` training samples drawn with the run seed."""
        rng = np.random.default_rng(derive_seed("root-set", self.seed))
        size = min(self.settings.root_set_size, len(self.train))
        return self.tensors(self.train.subset(np.sort(rng.choice(len(self.train), size=size, replace=False))))

    @functools.cached_property
    def test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tensors(self.test)

    def num_sampled(self, job: JobSpec) -> int:
        """Clients per round in ``job``: ceil(beta * |group|), at least min_sampled, at most |group|."""
        wanted = max(self.settings.min_sampled, math.ceil(self.settings.sample_fraction * len(job.client_ids)))
        return min(wanted, len(job.client_ids))

    def new_rule(self) -> AggregationRule:
        """A fresh aggregation rule (one per job: stateful rules keep per-job history)."""
        return self.rule_factory()

    def is_malicious(self, user_id: int) -> bool:
        return user_id in self.malicious_ids

    def attack_for(self, user_id: int) -> Attack:
        """The attack as ``user_id`` runs it (DBA gives each attacker its own trigger part)."""
        if not self.is_malicious(user_id):
            return self.attack
        return self.attack.for_client(user_id, tuple(sorted(self.malicious_ids)))

    def crafting_clients(self, server_round: int, sampled: tuple[int, ...]) -> tuple[int, ...]:
        """The sampled malicious clients that craft a phase-2 reply this round (sorted).

        Non-empty only for a full-knowledge attack (``needs_benign_updates``) in an active round.
        """
        if not (self.attack.needs_benign_updates and self.attack.is_active(server_round)):
            return ()
        return tuple(uid for uid in sampled if self.is_malicious(uid))
