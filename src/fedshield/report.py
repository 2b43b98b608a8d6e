"""``fedshield report SWEEP_DIR``: one CSV and the paper-style figures from many runs.

Every ``summary.json`` under SWEEP_DIR (a Hydra multirun folder, or any folder of runs, with
their ``fedshield certify`` re-certifications) becomes a row of ``report.csv``; the figures
compare what varies across the runs:

- ``ca_by_num_groups.png``: CA@m against m for each N (FLCert, Fig. 4);
- ``ca_by_rule.png``: FLCert with different base rules (Fig. 8);
- ``ca_by_system.png``: FLCert-D / FLCert-P against the single model and CRFL (Fig. 3);
- ``backdoor_bars.png``: clean accuracy and attack success rate per run (FLIP, Tables 1-2).

A re-certification (``RUN/certify/<settings>/summary.json``) is a row of ``report.csv`` with the
run it re-certifies in the ``recertifies`` column and its settings in ``overrides``; the figures
show runs only (a re-certification repeats its run's training, and would duplicate its bars and
curves). Legend labels are unique: runs whose labels would collide get their folder appended.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from fedshield.errors import UserError
from fedshield.files import write_csv
from fedshield.plots import plot_bars, plot_ca_curves

COLUMNS = [
    "run",
    "recertifies",
    "overrides",
    "mode",
    "N",
    "k",
    "n",
    "strategy",
    "attack",
    "num_malicious",
    "defense",
    "bounds",
    "alpha",
    "final_accuracy",
    "final_attack_success_rate",
    "ensemble_accuracy",
    "CA@0",
    "CA@1",
    "CA@2",
    "CA@5",
    "CA@10",
    "wall_time_seconds",
]


def _short(target: str | None) -> str:
    return "none" if not target else str(target).rsplit(".", 1)[-1]


def _recertified_run(summary_path: Path, recorded: str, sweep_dir: Path) -> str:
    """The folder (relative to ``sweep_dir``) of the run a re-certification certified again:
    ``RUN`` of ``RUN/certify/<settings>/``, else the recorded path (which moves with no folder)."""
    folder = summary_path.parent
    if folder.parent.name == "certify" and (folder.parent.parent / "config.yaml").exists():
        return str(folder.parent.parent.relative_to(sweep_dir)) or "."
    try:
        return str(Path(recorded).resolve().relative_to(sweep_dir.resolve())) or "."
    except ValueError:
        return recorded


def collect(sweep_dir: Path) -> list[dict]:
    """Every summary under ``sweep_dir``, with its folder as ``run`` (relative), sorted; a
    re-certification also has ``recertifies`` (the run's folder) and its ``overrides``."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for path in sorted(sweep_dir.rglob("summary.json")):
        summary = json.loads(path.read_text())
        summary["run"] = str(path.parent.relative_to(sweep_dir)) or "."
        if "recertified_from" in summary:
            summary["recertifies"] = _recertified_run(path, str(summary["recertified_from"]), sweep_dir)
            summary["overrides"] = " ".join(summary.get("overrides") or []) or "default"
        rows.append(summary)
    return rows


def _label(summary: dict, *fields: str) -> str:
    mode = summary.get("mode")
    if mode == "flcert_p":
        mode = f"flcert_p ({'exact' if summary.get('exact') else summary.get('bounds', 'paper')})"
    values = {
        "mode": mode,
        "N": f"N={summary.get('N')}" if summary.get("N") is not None else None,
        "rule": _short(summary.get("strategy")),
        "attack": f"{_short(summary.get('attack'))}x{summary.get('num_malicious', 0)}",
        "defense": _short(summary.get("defense")),
    }
    return ", ".join(str(values[f]) for f in fields if values[f] is not None)


def _unique_labels(rows: list[dict], *fields: str) -> list[str]:
    """Each row's legend label; rows sharing a label are told apart by their run folder."""
    labels = [_label(row, *fields) for row in rows]
    counts = Counter(labels)
    return [f"{label} [{row['run']}]" if counts[label] > 1 else label for label, row in zip(labels, rows, strict=True)]


def _curves(rows: list[dict], *fields: str) -> dict[str, dict[int, float]]:
    return {
        label: {int(m): float(v) for m, v in row["certified_accuracy"].items()}
        for label, row in zip(_unique_labels(rows, *fields), rows, strict=True)
    }


class ReportError(UserError, FileNotFoundError):
    """The folder given to ``fedshield report`` holds no run."""


def make_report(sweep_dir: Path, output_dir: Path | None = None) -> list[Path]:
    sweep_dir = Path(sweep_dir)
    output_dir = Path(output_dir) if output_dir is not None else sweep_dir
    rows = collect(sweep_dir)
    if not rows:
        raise ReportError(f"sweep_dir: no summary.json under {sweep_dir} (give a folder of fedshield runs)")
    table = []
    for row in rows:
        ca = row.get("certified_accuracy", {})
        flat = {
            **row,
            "strategy": _short(row.get("strategy")),
            "attack": _short(row.get("attack")),
            "defense": _short(row.get("defense")),
        }
        flat.update({f"CA@{m}": ca.get(str(m), 0.0 if ca else None) for m in (0, 1, 2, 5, 10)})
        table.append([flat.get(column) for column in COLUMNS])
    written = [output_dir / "report.csv"]
    write_csv(written[0], COLUMNS, table)

    runs = [r for r in rows if "recertifies" not in r]  # the figures compare runs (see module doc)
    certified = [r for r in runs if r.get("mode") in ("flcert_d", "flcert_p")]
    by_setting: dict[tuple, list[dict]] = defaultdict(list)
    for row in certified:
        by_setting[(row["mode"], row.get("strategy"), row.get("attack"), row.get("num_malicious"))].append(row)
    varying_n = [group for group in by_setting.values() if len({r.get("N") for r in group}) > 1]
    if varying_n:
        path = output_dir / "ca_by_num_groups.png"
        plot_ca_curves(
            _curves([row for group in varying_n for row in group], "mode", "N", "rule"),
            path,
            title="CA@m for each number of groups N (FLCert Fig. 4)",
        )
        written.append(path)
    if len({r.get("strategy") for r in certified}) > 1:
        path = output_dir / "ca_by_rule.png"
        plot_ca_curves(_curves(certified, "mode", "rule", "N"), path, title="FLCert with different base rules (Fig. 8)")
        written.append(path)
    systems = [r for r in runs if r.get("mode") in ("single", "crfl", "flcert_d", "flcert_p")]
    if len({r.get("mode") for r in systems}) > 1:
        path = output_dir / "ca_by_system.png"
        plot_ca_curves(
            _curves(systems, "mode", "rule", "N"), path, title="FLCert against single-model FL and CRFL (Fig. 3)"
        )
        written.append(path)
    backdoor = [r for r in runs if r.get("final_attack_success_rate") is not None]
    if backdoor:
        path = output_dir / "backdoor_bars.png"
        bars = {
            label: {
                "clean accuracy": float(r["final_accuracy"]),
                "attack success rate": float(r["final_attack_success_rate"]),
            }
            for label, r in zip(_unique_labels(backdoor, "attack", "rule", "defense"), backdoor, strict=True)
        }
        plot_bars(bars, path, title="Clean accuracy and attack success rate (FLIP Tables 1-2)")
        written.append(path)
    return written


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="fedshield report", description="Collect run summaries into a CSV and figures."
    )
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    for path in make_report(args.sweep_dir, args.output_dir):
        print(path)
