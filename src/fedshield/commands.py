"""Sub-commands that work on saved results: ``fedshield certify`` (and ``fedshield report``).

``fedshield certify RUN_DIR [key=value ...]`` recomputes every certificate from the run's saved
``votes.npy`` with the run's config, changed by the given overrides (e.g. ``ensemble.alpha=0.01``
or ``ensemble.bounds=simultaneous``); no retraining. Results go to ``RUN_DIR/certify/<tag>/``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedshield.report import main as report_main
from fedshield.run import votes_from_predictions, write_certificate_report


def recertify(run_dir: Path, overrides: list[str], *, output_dir: Path | None = None) -> dict:
    """Certify ``run_dir``'s saved votes under its config plus ``overrides``; return the summary."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "predictions.npy", "labels.npy"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir} is not a fedshield run folder: {name} is missing")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    predictions = np.load(run_dir / "predictions.npy", allow_pickle=False)
    votes = votes_from_predictions(predictions, num_labels=int(np.load(run_dir / "num_labels.npy")))
    labels = np.load(run_dir / "labels.npy", allow_pickle=False)
    ensemble = instantiate(cfg.ensemble)
    tag = re.sub(r"[^A-Za-z0-9_.=-]+", "_", "_".join(overrides)) or "default"
    output_dir = Path(output_dir) if output_dir is not None else run_dir / "certify" / tag
    output_dir.mkdir(parents=True, exist_ok=True)
    original = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    carried = ("num_rounds", "num_malicious", "attack", "strategy", "defense", "dataset", "final_accuracy", "engine")
    return write_certificate_report(
        ensemble,
        votes,
        labels,
        output_dir,
        num_clients=int(cfg.num_clients),
        seed=int(cfg.seed),
        extra={
            **{key: original[key] for key in carried if key in original},
            "recertified_from": str(run_dir),
            "overrides": overrides,
        },
    )


def certify(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="fedshield certify", description=__doc__.split("\n\n")[1])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. ensemble.bounds=simultaneous")
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    summary = recertify(args.run_dir, args.overrides, output_dir=args.output_dir)
    print(f"mode={summary.get('mode')} bounds={summary.get('bounds')} alpha={summary.get('alpha')}")
    for m, value in list(summary["certified_accuracy"].items())[:16]:
        print(f"CA@{m} = {value:.4f}")


def report(argv: list[str]) -> None:
    report_main(argv)
