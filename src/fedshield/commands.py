"""Sub-commands that work on saved results: ``fedshield certify`` (and ``fedshield report``).

``fedshield certify RUN_DIR [key=value ...]`` recomputes every certificate from the run's saved
``votes.npy`` (``predictions.npy`` for a sparse label space, which has no votes.npy) with the run's
config, changed by the given overrides; no retraining. Only certification settings can change
(FLCert-P's ``ensemble.alpha`` and ``ensemble.bounds``); every other key would need retraining
and is refused. Results go to ``RUN_DIR/certify/<settings>/``, e.g. ``certify/ensemble.alpha=0.5``
(the normalized ``key=value`` pairs, sorted, joined by commas; ``default`` without overrides).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedshield.certify import TopVotes
from fedshield.config import ConfigError
from fedshield.config.build import selected_jobs
from fedshield.config.run_folder import load_run_config
from fedshield.config.user_errors import field_first, named_field
from fedshield.data import make_user_ids
from fedshield.ensembles import Ensemble
from fedshield.report import main as report_main
from fedshield.run import keeps_sparse_votes, votes_from_predictions, write_certificate_report
from fedshield.task.jobs import make_jobs

_ABSENT = object()


def _make_ensemble(cfg: DictConfig, source: str) -> Ensemble:
    try:
        ensemble = instantiate(cfg.ensemble)
    except Exception as error:  # Hydra wraps the ensemble's own GroupingError in its own error
        cause = str(error.__cause__ if error.__cause__ is not None else error)
        # The ensembles' own messages start with their field ("ensemble.alpha must be ...").
        field = named_field(cause)
        named = field is not None and field.startswith("ensemble.")
        raise ConfigError(field_first(cause) if named else f"{source}: {cause}") from error
    if not isinstance(ensemble, Ensemble):
        raise ConfigError(f"{source}: ensemble must be a fedshield ensemble; got {type(ensemble).__name__}")
    return ensemble


def _dotted_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _dotted_keys(value, f"{prefix}{key}.")
    yield prefix.rstrip(".")


def _parse_override(override: str) -> tuple[str, Any]:
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"overrides: each must be key=value, e.g. ensemble.alpha=0.01; got {override!r}")
    if key[0] in "+~":
        raise ConfigError(f"{key}: certify changes existing settings only; adding or deleting keys is not allowed")
    # The value as the run's config would hold it (YAML: 0.5 is a float, paper a string).
    return key, OmegaConf.from_dotlist([f"value={raw}"])["value"]


def _check_override(cfg: DictConfig, ensemble: Ensemble, key: str, value: Any) -> None:
    """Refuse a key the run's config lacks, and one whose change would need retraining."""
    allowed = [f"ensemble.{name}" for name in ensemble.certification_settings()]
    allowed_text = ", ".join(allowed) if allowed else f"nothing (the {ensemble.mode} certificate has no settings)"
    current = OmegaConf.select(cfg, key, default=_ABSENT)
    if current is _ABSENT:
        if key.startswith("ensemble."):
            raise ConfigError(
                f"{key}: the run's {ensemble.mode} ensemble has no such setting; certify can change {allowed_text}"
            )
        keys = list(_dotted_keys(OmegaConf.to_container(cfg, resolve=False)))
        similar = [candidate for candidate in keys if candidate.endswith(f".{key}")]
        hint = f"; did you mean {' or '.join(similar)}?" if similar else f"; certify can change {allowed_text}"
        raise ConfigError(f"{key}: no such setting in the run's config.yaml{hint}")
    if key not in allowed:
        raise ConfigError(
            f"{key}: changing it would need retraining; certify can change {allowed_text}; got {key}={value}"
        )
    if isinstance(current, int | float) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number; got {value!r}")


def _normalized_overrides(cfg: DictConfig, ensemble: Ensemble, overrides: list[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for override in overrides:
        key, value = _parse_override(override)
        _check_override(cfg, ensemble, key, value)
        settings[key] = value  # the last value of a key wins, as in Hydra
    return dict(sorted(settings.items()))


def _expected_voters(cfg: DictConfig, ensemble: Ensemble) -> int:
    """N, the number of votes each test input got: the run's jobs (its non-empty groups, or the
    ``only_jobs`` it trained) or, for CRFL, its noisy copies; rebuilt from the config alone."""
    seed = int(cfg.seed)
    try:
        ensemble.check(int(cfg.num_clients))
        groups = ensemble.groups(make_user_ids(int(cfg.num_clients), seed=seed), seed=seed)
    except ValueError as error:
        raise ConfigError(f"config.yaml: {error}") from error
    return ensemble.num_voters(len(selected_jobs(make_jobs(groups, run_seed=seed), cfg.get("only_jobs"))))


def _load_array(run_dir: Path, name: str) -> np.ndarray:
    path = run_dir / name
    if not path.is_file():
        raise ConfigError(f"{name}: missing from the run folder {run_dir}")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises many kinds (ValueError, EOFError, OSError, ...)
        raise ConfigError(f"{name}: cannot be read as a .npy array ({type(error).__name__}: {error})") from error
    if not isinstance(array, np.ndarray):
        raise ConfigError(f"{name}: must hold one .npy array; got an .npz archive")
    if not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"{name}: must hold integers; got dtype {array.dtype}")
    return array


def _check_range(name: str, array: np.ndarray, what: str, *, upper: int) -> None:
    if array.size and (array.min() < 0 or array.max() >= upper):
        bad = array[(array < 0) | (array >= upper)].flat[0]
        raise ConfigError(f"{name}: every {what} must be in [0, {upper}); got {bad}")


def load_run_inputs(run_dir: Path, cfg: DictConfig, ensemble: Ensemble) -> tuple[np.ndarray | TopVotes, np.ndarray]:
    """The run's votes and true labels, every file checked against the others and the config:
    integer arrays of the right shape, labels in [0, num_labels), and N votes per input."""
    num_labels_array = _load_array(run_dir, "num_labels.npy")
    if num_labels_array.size != 1 or int(num_labels_array.flat[0]) < 1:
        raise ConfigError(f"num_labels.npy: must hold one integer >= 1; got {num_labels_array.tolist()}")
    num_labels = int(num_labels_array.flat[0])
    labels = _load_array(run_dir, "labels.npy")
    if labels.ndim != 1 or labels.size == 0:
        raise ConfigError(f"labels.npy: must be a non-empty 1-D array of test labels; got shape {labels.shape}")
    _check_range("labels.npy", labels, "label", upper=num_labels)
    num_inputs = len(labels)
    num_voters = _expected_voters(cfg, ensemble)
    if keeps_sparse_votes(num_labels=num_labels, num_voters=num_voters):
        predictions = _load_array(run_dir, "predictions.npy")
        if predictions.shape != (num_voters, num_inputs):
            raise ConfigError(
                f"predictions.npy: must have shape (voters N={num_voters}, test inputs={num_inputs}) "
                f"from config.yaml and labels.npy; got {predictions.shape}"
            )
        _check_range("predictions.npy", predictions, "predicted label", upper=num_labels)
        return votes_from_predictions(predictions, num_labels=num_labels), labels
    if not (run_dir / "votes.npy").is_file():
        raise ConfigError(
            f"votes.npy: missing from {run_dir}; a run with {num_labels} labels keeps its vote counts there "
            f"(predictions.npy alone only for more than {num_voters} voters' labels and > 1000 labels)"
        )
    votes = _load_array(run_dir, "votes.npy")
    if votes.shape != (num_inputs, num_labels):
        raise ConfigError(
            f"votes.npy: must have shape (test inputs={num_inputs}, labels={num_labels}) "
            f"from labels.npy and num_labels.npy; got {votes.shape}"
        )
    if votes.size and votes.min() < 0:
        raise ConfigError(f"votes.npy: vote counts must be >= 0; got {votes.min()}")
    totals = votes.sum(axis=1)
    wrong = np.flatnonzero(totals != num_voters)
    if wrong.size:
        raise ConfigError(
            f"votes.npy: each input's votes must sum to N={num_voters} voters (from config.yaml); "
            f"got {totals[wrong[0]]} for input {wrong[0]} ({wrong.size} inputs wrong)"
        )
    return votes.astype(np.int64, copy=False), labels


def _load_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"summary.json: cannot be read as JSON ({error})") from error
    if not isinstance(summary, dict):
        raise ConfigError(f"summary.json: must hold a JSON object; got {type(summary).__name__}")
    return summary


def recertify(run_dir: Path, overrides: list[str], *, output_dir: Path | None = None) -> dict:
    """Certify ``run_dir``'s saved votes under its config plus ``overrides``; return the summary.

    Everything is checked before anything is written: a refused certify leaves the run folder
    as it was. Raises :class:`~fedshield.config.ConfigError` naming the setting or file at fault.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    run_ensemble = _make_ensemble(cfg, "config.yaml: ensemble")
    settings = _normalized_overrides(cfg, run_ensemble, overrides)
    for key, value in settings.items():
        OmegaConf.update(cfg, key, value, merge=False)
    ensemble = _make_ensemble(cfg, "overrides") if settings else run_ensemble
    votes, labels = load_run_inputs(run_dir, cfg, run_ensemble)
    original = _load_summary(run_dir)
    applied = [f"{key}={value}" for key, value in settings.items()]
    # Named from the settings used (sorted, normalized), so one setting always lands in one folder.
    tag = ",".join(applied).replace("/", "_") or "default"
    output_dir = Path(output_dir) if output_dir is not None else run_dir / "certify" / tag
    output_dir.mkdir(parents=True, exist_ok=True)
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
            "overrides": applied,
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
