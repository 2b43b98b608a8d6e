"""Ensemble modes: a single FL job, FLCert-D, or FLCert-P; each groups clients and certifies votes.

The Hydra group ``ensemble`` instantiates one of these. They hold no training logic: the
engines train one determinized job per group, and these turn the groups' votes into
predictions and certified security levels through :mod:`fedshield.certify`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from fedshield.certify import TopVotes, flcert_d, flcert_p, flcert_p_exact
from fedshield.ensembles.crfl import crfl_round, smoothed_copies
from fedshield.ensembles.grouping import (
    FLCERT_D_GROUPINGS,
    GroupingError,
    balanced_groups,
    flcert_d_groups,
    flcert_p_groups,
)
from fedshield.task.determinism import derive_seed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Certificate:
    predictions: np.ndarray  # (num_inputs,) label, or -1 for abstain
    levels: np.ndarray  # (num_inputs,) certified number of malicious clients, -1 for abstain
    info: dict = field(default_factory=dict)


class Ensemble(ABC):
    """How clients become jobs and the jobs' votes become certificates.

    Defaults shared by every mode: no server-side change to the aggregated model, and the
    votes are the jobs' own predictions."""

    mode: str
    # Whether the voters are the jobs' own final models (then their final evaluation is the vote).
    voters_are_jobs: ClassVar[bool] = True

    @abstractmethod
    def check(self, num_clients: int) -> None:
        """Raise :class:`GroupingError` when the mode cannot group ``num_clients`` clients."""

    @abstractmethod
    def groups(self, user_ids: tuple[int, ...], *, seed: int) -> list[tuple[int, ...]]:
        """The clients of each group (sorted user IDs); an empty group trains no job."""

    @abstractmethod
    def certify(self, votes: np.ndarray | TopVotes, *, num_clients: int, seed: int) -> Certificate:
        """Predictions and certified levels from the vote counts."""

    def postprocess_round(self, params: torch.Tensor, *, job_seed: int, server_round: int) -> torch.Tensor:
        return params

    def voters(self, params_by_job: Mapping[int, torch.Tensor], *, seed: int) -> Iterable[torch.Tensor]:
        """Parameter vectors whose predictions are the votes, in a fixed order."""
        return [params_by_job[job_id] for job_id in sorted(params_by_job)]

    def expected_iterations_per_client(self, *, num_clients: int, num_rounds: int, sample_fraction: float) -> float:
        """FLCert Sec. V: global iterations a client takes part in, beta * T for one job or disjoint groups."""
        return sample_fraction * num_rounds

    def num_voters(self, num_jobs: int) -> int:
        """How many votes each test input gets: one per trained job unless the mode votes otherwise."""
        return num_jobs

    def certification_settings(self) -> tuple[str, ...]:
        """Fields that change only the certificate, not the training or the votes: the settings
        ``fedshield certify`` may change on a finished run."""
        return ()


class SingleModel(Ensemble):
    """One FL job over all clients. Certified level 0: one malicious client can steer FedAvg anywhere."""

    mode = "single"

    def groups(self, user_ids: tuple[int, ...], *, seed: int) -> list[tuple[int, ...]]:
        return [tuple(sorted(user_ids))]

    def check(self, num_clients: int) -> None:
        return None

    def certify(self, votes, *, num_clients: int, seed: int) -> Certificate:
        predictions = votes.labels[:, 0] if hasattr(votes, "labels") else np.argmax(votes, axis=1)
        return Certificate(predictions, np.zeros(len(votes), dtype=np.int64), {"mode": self.mode})


@dataclass
class CRFL(Ensemble):
    """CRFL baseline (Xie et al., 2021): one job whose global model is clipped to ``clip_norm``
    and perturbed with N(0, ``noise_std``^2) every round; predictions are a majority vote over
    ``num_noisy_models`` noisy copies. Under FLCert's unbounded threat model its CA@m is 0 for
    m >= 1 (see :mod:`fedshield.ensembles.crfl`)."""

    clip_norm: float = 15.0
    noise_std: float = 0.01
    num_noisy_models: int = 1000
    mode: str = "crfl"
    voters_are_jobs: ClassVar[bool] = False  # the noisy copies vote; the job's model does not

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise GroupingError(f"ensemble.clip_norm must be > 0; got {self.clip_norm}")
        if self.noise_std < 0:
            raise GroupingError(f"ensemble.noise_std must be >= 0; got {self.noise_std}")
        if self.num_noisy_models < 1:
            raise GroupingError(f"ensemble.num_noisy_models must be >= 1; got {self.num_noisy_models}")

    def check(self, num_clients: int) -> None:
        return None

    def groups(self, user_ids: tuple[int, ...], *, seed: int) -> list[tuple[int, ...]]:
        return [tuple(sorted(user_ids))]

    def postprocess_round(self, params, *, job_seed: int, server_round: int):
        return crfl_round(
            params, max_norm=self.clip_norm, sigma=self.noise_std, job_seed=job_seed, server_round=server_round
        )

    def num_voters(self, num_jobs: int) -> int:
        return self.num_noisy_models  # the noisy copies of the one job's model vote, not the job

    def voters(self, params_by_job, *, seed: int):
        (params,) = params_by_job.values()
        return smoothed_copies(
            params, sigma=self.noise_std, num_copies=self.num_noisy_models, seed=derive_seed("crfl", seed)
        )

    def certify(self, votes, *, num_clients: int, seed: int) -> Certificate:
        predictions = votes.labels[:, 0] if hasattr(votes, "labels") else np.argmax(votes, axis=1)
        info = {"mode": self.mode, "rho": self.clip_norm, "sigma": self.noise_std, "M": self.num_noisy_models}
        return Certificate(predictions, np.zeros(len(predictions), dtype=np.int64), info)


@dataclass
class FLCertD(Ensemble):
    """FLCert-D: ``num_groups`` disjoint groups, dealt by keyed-hash rank (``grouping=balanced``,
    no empty group) or by keyed hash mod N (``hash``, the paper's); deterministic certificate (eq. 12)."""

    num_groups: int = 10
    # conf/ensemble/flcert_d.yaml chooses balanced; "hash" here keeps configs saved before the
    # field existed (all hash-grouped) resuming and reproducing as they were run.
    grouping: str = "hash"
    mode: str = "flcert_d"

    def __post_init__(self) -> None:
        if self.grouping not in FLCERT_D_GROUPINGS:
            allowed = " or ".join(repr(name) for name in FLCERT_D_GROUPINGS)
            raise GroupingError(f"ensemble.grouping: must be {allowed}; got {self.grouping!r}")

    def check(self, num_clients: int) -> None:
        if not 1 <= self.num_groups <= num_clients:
            raise GroupingError(f"ensemble.num_groups must be in [1, n={num_clients}]; got {self.num_groups}")

    def groups(self, user_ids: tuple[int, ...], *, seed: int) -> list[tuple[int, ...]]:
        key = derive_seed("flcert-d-key", seed)
        if self.grouping == "balanced":
            return balanced_groups(user_ids, num_groups=self.num_groups, key=key)
        groups = flcert_d_groups(user_ids, num_groups=self.num_groups, key=key)
        empty = sum(1 for group in groups if not group)
        if empty:
            logger.warning(
                "FLCert-D: %d of %d hash groups are empty; they train no model and cast no vote", empty, len(groups)
            )
        return groups

    def certify(self, votes: np.ndarray | TopVotes, *, num_clients: int, seed: int) -> Certificate:
        predictions, levels = flcert_d(votes)
        return Certificate(predictions, levels, {"mode": self.mode, "N": self.num_groups, "n": num_clients})


@dataclass
class FLCertP(Ensemble):
    """FLCert-P: N groups of k clients drawn without replacement; Algorithm 1 or exact certificate."""

    num_groups: int = 100
    group_size: int | None = None
    exhaustive: bool = False
    max_exhaustive_groups: int = 10_000
    alpha: float = 0.001
    bounds: str = "paper"
    mode: str = "flcert_p"

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise GroupingError(f"ensemble.alpha must be in (0, 1); got {self.alpha}")
        if self.bounds not in ("paper", "simultaneous"):
            raise GroupingError(f"ensemble.bounds must be 'paper' or 'simultaneous'; got {self.bounds!r}")

    def certification_settings(self) -> tuple[str, ...]:
        # The exact certificate (exhaustive groups) uses neither a confidence level nor bounds.
        return () if self.exhaustive else ("alpha", "bounds")

    def resolved_group_size(self, num_clients: int) -> int:
        # The paper's default k = n / N.
        return self.group_size if self.group_size is not None else max(1, num_clients // self.num_groups)

    def expected_iterations_per_client(self, *, num_clients: int, num_rounds: int, sample_fraction: float) -> float:
        """FLCert Sec. V: a client is in about k N / n groups, each costing beta_e T_e iterations."""
        k = self.resolved_group_size(num_clients)
        return k * self.num_groups * sample_fraction * num_rounds / num_clients

    def check(self, num_clients: int) -> None:
        if self.num_groups < 1:
            raise GroupingError(f"ensemble.num_groups must be >= 1; got {self.num_groups}")
        k = self.resolved_group_size(num_clients)
        if not 1 <= k <= num_clients:
            raise GroupingError(f"ensemble.group_size must be in [1, n={num_clients}]; got {k}")

    def groups(self, user_ids: tuple[int, ...], *, seed: int) -> list[tuple[int, ...]]:
        return flcert_p_groups(
            user_ids,
            num_groups=self.num_groups,
            group_size=self.resolved_group_size(len(user_ids)),
            seed=seed,
            exhaustive=self.exhaustive,
            max_exhaustive_groups=self.max_exhaustive_groups,
        )

    def certify(self, votes: np.ndarray | TopVotes, *, num_clients: int, seed: int) -> Certificate:
        k = self.resolved_group_size(num_clients)
        total = votes.total if hasattr(votes, "total") else votes.sum(axis=1)
        info = {"mode": self.mode, "N": int(np.max(total)), "k": k, "n": num_clients}
        if self.exhaustive:
            predictions, levels = flcert_p_exact(votes, n=num_clients, k=k)
            return Certificate(predictions, levels, {**info, "exact": True})
        predictions, levels = flcert_p(
            votes, n=num_clients, k=k, alpha=self.alpha, bounds=self.bounds, tie_seed=derive_seed("tie", seed)
        )
        return Certificate(predictions, levels, {**info, "alpha": self.alpha, "bounds": self.bounds})
