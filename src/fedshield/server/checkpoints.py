"""Per-job checkpoints: a finished group's model is saved at once, so a killed run resumes.

A checkpoint records the digest of everything in the config that affects the math
(:func:`fedshield.config.digest.config_digest`); resuming with a different config is refused
instead of silently mixing two experiments.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedshield.errors import UserError
from fedshield.files import write_torch


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint in the output directory belongs to another configuration."""


class CheckpointStore:
    def __init__(self, directory: Path, *, digest: str) -> None:
        self.directory = Path(directory)
        self.digest = digest

    def path(self, job_id: int) -> Path:
        return self.directory / f"job_{job_id:05d}.pt"

    def save(
        self, job_id: int, params: torch.Tensor, history: list[dict], predictions: torch.Tensor | None = None
    ) -> None:
        """Write a finished job; its predicted test labels too, so a resumed run need not
        evaluate it again."""
        payload = {"job_id": job_id, "digest": self.digest, "params": params, "history": history}
        if predictions is not None:
            payload["predictions"] = predictions
        write_torch(self.path(job_id), payload)

    def load(self, job_id: int) -> tuple[torch.Tensor, list[dict], torch.Tensor | None] | None:
        """A job's params, history and predictions (None in checkpoints written before
        predictions were saved); None when the job has no checkpoint."""
        path = self.path(job_id)
        if not path.exists():
            return None
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("digest") != self.digest:
            raise CheckpointMismatchError(
                f"{path} was written by another configuration; use a new output_dir or resume=false"
            )
        return payload["params"], payload["history"], payload.get("predictions")

    def clear(self) -> None:
        for path in self.directory.glob("job_*.pt"):
            path.unlink()
