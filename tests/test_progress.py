"""Progress shows as plain lines when stderr is not a terminal (logs, CI, nohup)."""

import logging

from fedshield import progress
from fedshield.progress import JobProgress


def test_plain_progress_lines_when_not_interactive(caplog, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="fedshield.progress"):
        with JobProgress(total_jobs=2, done=0, rounds=3, interactive=False) as bar:
            bar.round_done(0, 1)
            bar.round_done(1, 1)
            bar.round_done(0, 2)
            bar.job_done()
    lines = [r.getMessage() for r in caplog.records if r.name == "fedshield.progress"]
    assert any("2/6 rounds" in line for line in lines)
    assert any("3/6 rounds" in line for line in lines)
    assert lines[-1].startswith("progress: 1/2 jobs done")


def test_plain_lines_are_rate_limited(caplog, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 3600.0)
    with caplog.at_level(logging.INFO, logger="fedshield.progress"):
        with JobProgress(total_jobs=1, done=0, rounds=100, interactive=False) as bar:
            for server_round in range(1, 101):
                bar.round_done(0, server_round)
    lines = [r.getMessage() for r in caplog.records if r.name == "fedshield.progress"]
    assert len(lines) == 2  # the first round, then the closing line
    assert "100/100 rounds" in lines[-1]


def test_a_resumed_run_counts_the_finished_jobs_rounds(caplog, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="fedshield.progress"):
        with JobProgress(total_jobs=3, done=2, rounds=4, interactive=False) as bar:
            bar.round_done(2, 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "fedshield.progress"]
    assert "progress: 2/3 jobs done, 9/12 rounds" in lines[-1]
