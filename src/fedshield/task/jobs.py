"""One determinized FL job: a group of clients, a seed, and the job's index."""

from __future__ import annotations

from dataclasses import dataclass

from fedshield.task.determinism import derive_seed


@dataclass(frozen=True)
class JobSpec:
    """One determinized FL job: the group's index, its seed and its clients' user IDs (sorted)."""

    job_id: int
    seed: int
    client_ids: tuple[int, ...]


def job_seed(run_seed: int, job_id: int) -> int:
    """Seed of job ``job_id``; a lone run of that job with the same seed is the same job."""
    return derive_seed("job", run_seed, job_id)


def make_jobs(groups: list[tuple[int, ...]], *, run_seed: int) -> tuple[JobSpec, ...]:
    """One job per non-empty group; the job ID stays the group's index."""
    return tuple(
        JobSpec(job_id=g, seed=job_seed(run_seed, g), client_ids=members) for g, members in enumerate(groups) if members
    )
