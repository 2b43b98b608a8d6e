"""Progress over jobs and rounds: a rich bar on a terminal, a plain line every few seconds
otherwise (logs, CI, nohup), so long runs always show where they are."""

from __future__ import annotations

import logging
import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

logger = logging.getLogger(__name__)

PLAIN_EVERY_SECONDS = 10.0


class JobProgress:
    def __init__(self, *, total_jobs: int, done: int, rounds: int, interactive: bool | None = None) -> None:
        self.total_jobs, self.jobs_done = total_jobs, done
        # Rounds counted over all jobs (jobs may train side by side, each at its own round): a
        # finished job counts all its rounds.
        self.total_rounds, self.rounds_done = total_jobs * rounds, done * rounds
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._started = time.monotonic()
        self._last_line = -float("inf")
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not self.interactive,
        )
        self._jobs = self._progress.add_task("FL jobs", total=total_jobs, completed=done)
        self._rounds = self._progress.add_task(
            "rounds (all jobs)", total=self.total_rounds, completed=self.rounds_done, visible=total_jobs > 0
        )

    def __enter__(self) -> JobProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
        self._plain(force=True)

    def job_done(self) -> None:
        self.jobs_done += 1
        self._progress.advance(self._jobs)
        self._plain()

    def round_done(self, job_id: int, server_round: int) -> None:
        """Job ``job_id`` finished round ``server_round`` (an :data:`~fedshield.engines.base.OnRound`)."""
        self.rounds_done += 1
        self._progress.advance(self._rounds)
        self._plain()

    def _plain(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.interactive or (not force and now - self._last_line < PLAIN_EVERY_SECONDS):
            return
        self._last_line = now
        logger.info(
            "progress: %d/%d jobs done, %d/%d rounds over all jobs, %.0f s",
            self.jobs_done,
            self.total_jobs,
            self.rounds_done,
            self.total_rounds,
            now - self._started,
        )
