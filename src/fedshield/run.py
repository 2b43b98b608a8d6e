"""One fedshield run, as a short pipeline: build the experiment, train its jobs on an engine,
vote, certify, write results.

Output folder (Hydra's run dir):

- ``config.yaml``   the resolved configuration
- ``jobs/job_NNNNN.pt``  each job's final parameters and per-round metrics (resume points)
- ``metrics.json``  per round of job 0 (the single model): accuracy, loss, attack success, time;
  in an ensemble also ``groups``: per round the mean, std, min and max over all groups
- ``final_model.pt`` state_dict of job 0; ``accuracy.png`` (job 0, and the groups' min-max band)
- ``predictions.npy`` jobs x test inputs predicted labels; ``labels.npy`` true labels
- ``votes.npy``     test inputs x labels vote counts (dense label spaces only)
- ``certification.csv``  index, true label, prediction, certified level
- ``summary.json``  accuracy, CA@m keyed by m, mode, N, k, n, alpha, wall time; ``ca_curve.png``
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedshield.certify import certified_accuracy, top_votes_from_predictions
from fedshield.certify.sparse import TopVotes
from fedshield.config import build_experiment, with_absolute_paths
from fedshield.config.digest import config_digest, result_differences
from fedshield.engines import Engine, FinishedJob
from fedshield.ensembles import Ensemble
from fedshield.errors import UserError
from fedshield.experiment import Experiment
from fedshield.files import write_csv, write_json, write_npy, write_text, write_torch
from fedshield.plots import plot_accuracy, plot_ca_curves
from fedshield.progress import JobProgress
from fedshield.server.checkpoints import CheckpointStore
from fedshield.server.evaluation import triggered_test_set, write_backdoor_plot
from fedshield.task.determinism import configure_torch
from fedshield.task.metrics import attack_success_rate, mean_over_last_rounds
from fedshield.task.training import predict_logits

logger = logging.getLogger(__name__)


# Above this many labels (and more labels than jobs), votes are kept sparse: the top labels of
# each input instead of a dense test-inputs x vocabulary matrix (next-word prediction).
DENSE_LABEL_LIMIT = 1000


def keeps_sparse_votes(*, num_labels: int, num_voters: int) -> bool:
    """Whether a run keeps only ``predictions.npy`` (top labels per input) and no dense ``votes.npy``."""
    return num_labels > DENSE_LABEL_LIMIT and num_labels > num_voters


def job_predictions(
    experiment: Experiment, params_by_job: dict[int, torch.Tensor], x: torch.Tensor | None = None
) -> np.ndarray:
    """(num_voters, num_inputs) labels predicted by each voting model on ``x`` (the test set by
    default): the jobs' models in ID order (FLCert), or the ensemble's own voters (CRFL's noisy
    copies)."""
    inputs = experiment.test_tensors[0] if x is None else x
    voters = experiment.ensemble.voters(params_by_job, seed=experiment.seed)
    return np.stack(
        [predict_logits(experiment.model_from_params(params), inputs).argmax(1).cpu().numpy() for params in voters]
    ).astype(np.int64)


def voter_predictions(experiment: Experiment, finished: dict[int, FinishedJob]) -> np.ndarray:
    """(num_voters, num_test) labels: each job's predictions from its final evaluation when the
    jobs' models are the voters, or computed (:func:`job_predictions`) for the ensemble's own
    voters (CRFL's noisy copies) and for checkpoints saved without predictions."""
    if not experiment.ensemble.voters_are_jobs:
        return job_predictions(experiment, {job_id: job.params for job_id, job in finished.items()})
    saved = {job_id: job.predictions.numpy() for job_id, job in finished.items() if job.predictions is not None}
    missing = {job_id: job.params for job_id, job in finished.items() if job.predictions is None}
    if missing:
        saved.update(zip(sorted(missing), job_predictions(experiment, missing), strict=True))
    return np.stack([saved[job_id] for job_id in sorted(finished)]).astype(np.int64)


def ensemble_attack_success(experiment: Experiment, params_by_job: dict[int, torch.Tensor]) -> dict[str, float]:
    """The backdoor measured on the ensemble, not on one group model: every voter predicts the
    triggered test inputs, the ensemble's label is their (certified) majority vote, and the
    attack succeeds on an input when that label is the target. Empty without a trigger."""
    triggered = triggered_test_set(experiment)
    target = experiment.attack.target_label
    if triggered is None or target is None:
        return {}
    stamped_x, stamped_y = triggered
    predictions = job_predictions(experiment, params_by_job, stamped_x)
    votes = votes_from_predictions(predictions, num_labels=experiment.test.num_classes)
    certificate = experiment.ensemble.certify(
        votes, num_clients=experiment.federation.num_clients, seed=experiment.seed
    )
    labels = stamped_y.cpu().numpy()
    exclude = experiment.attack.success_rate_excludes_target
    return {
        "ensemble_attack_success_rate": attack_success_rate(
            certificate.predictions, labels, target_label=target, exclude_target=exclude
        ),
        "voter_attack_success_rate_mean": float(
            np.mean(
                [attack_success_rate(row, labels, target_label=target, exclude_target=exclude) for row in predictions]
            )
        ),
    }


def votes_from_predictions(predictions: np.ndarray, *, num_labels: int) -> np.ndarray | TopVotes:
    """Vote counts over the jobs: dense (num_test, num_labels), or :class:`TopVotes` when the
    label space is large, listing every label that got a vote (so nothing is approximated)."""
    num_jobs, num_test = predictions.shape
    if keeps_sparse_votes(num_labels=num_labels, num_voters=num_jobs):
        return top_votes_from_predictions(predictions, min(num_jobs, num_labels), num_labels=num_labels)
    votes = np.zeros((num_test, num_labels), dtype=np.int64)
    for row in predictions:
        np.add.at(votes, (np.arange(num_test), row), 1)
    return votes


def write_certificate_report(
    ensemble: Ensemble,
    votes: np.ndarray | TopVotes,
    labels: np.ndarray,
    output_dir: Path,
    *,
    num_clients: int,
    seed: int,
    extra: dict,
) -> dict:
    """Certificates from ``votes``: CA@m for m = 0..max level + 1, CSV, plot and summary.json."""
    certificate = ensemble.certify(votes, num_clients=num_clients, seed=seed)
    max_level = max(int(certificate.levels.max(initial=0)), 0)
    ms = np.arange(0, max_level + 2)
    curve = certified_accuracy(labels, certificate.predictions, certificate.levels, ms)
    write_csv(
        output_dir / "certification.csv",
        ["index", "label", "prediction", "level"],
        zip(
            range(len(labels)),
            labels.tolist(),
            certificate.predictions.tolist(),
            certificate.levels.tolist(),
            strict=True,
        ),
    )
    mode = certificate.info.get("mode", "ensemble")
    plot_ca_curves(
        {mode: {int(m): float(v) for m, v in zip(ms, curve, strict=True)}},
        output_dir / "ca_curve.png",
        title=f"{mode}: {len(labels)} test inputs, n={num_clients}",
    )
    summary = {
        **certificate.info,
        "ensemble_accuracy": float(np.mean(certificate.predictions == labels)),
        "abstained": int(np.sum(certificate.predictions < 0)),
        "certified_accuracy": {str(int(m)): float(v) for m, v in zip(ms, curve, strict=True)},
        **extra,
    }
    write_json(output_dir / "summary.json", summary)
    return summary


def write_participation(experiment: Experiment, histories: list[list[dict]], path: Path) -> dict:
    """Per-client count of global iterations taken part in (replies that arrived), over all jobs,
    beside the FLCert paper's Sec. V estimate; writes ``participation.csv``."""
    counts = dict.fromkeys(experiment.federation.user_ids, 0)
    for history in histories:
        for record in history:
            for uid in record.get("participants", ()):
                counts[uid] += 1
    write_csv(path, ["user_id", "iterations"], sorted(counts.items()))
    values = np.array(list(counts.values()), dtype=np.float64)
    expected = experiment.ensemble.expected_iterations_per_client(
        num_clients=experiment.federation.num_clients,
        num_rounds=experiment.num_rounds,
        sample_fraction=experiment.settings.sample_fraction,
    )
    return {
        "iterations_per_client_mean": float(values.mean()),
        "iterations_per_client_min": int(values.min()),
        "iterations_per_client_max": int(values.max()),
        "iterations_per_client_formula": float(expected),
    }


class ResumeError(UserError, ValueError):
    """``resume`` asked for on a folder written by another configuration."""


def load_finished_jobs(
    cfg: DictConfig, experiment: Experiment, output_dir: Path, store: CheckpointStore
) -> dict[int, FinishedJob]:
    """The jobs a resumed run keeps, after checking (and writing nothing) that ``output_dir``
    was written by this configuration: its saved config.yaml and every checkpoint."""
    saved_config = output_dir / "config.yaml"
    if saved_config.exists():
        saved = OmegaConf.load(saved_config)
        assert isinstance(saved, DictConfig)  # config.yaml is a mapping
        differences = result_differences(saved, cfg)
        if differences:
            shown = ", ".join(f"{key} (saved {old}, given {new})" for key, old, new in differences[:4])
            more = f" and {len(differences) - 4} more" if len(differences) > 4 else ""
            raise ResumeError(
                f"resume: {output_dir} was run with another config: {shown}{more}; "
                f"`fedshield resume {output_dir}` resumes it with its saved config, or choose a new output_dir"
            )
    finished: dict[int, FinishedJob] = {}
    for job in experiment.jobs:
        loaded = store.load(job.job_id)  # raises CheckpointMismatchError for another config's job
        if loaded is not None:
            finished[job.job_id] = FinishedJob(job.job_id, *loaded)
    return finished


def resume_line(output_dir: Path, *, finished: int, total: int) -> str:
    """What a resumed run says it does."""
    if finished == 0:
        return f"nothing to resume in {output_dir}: 0 of {total} groups finished, training all {total}"
    if finished == total:
        return f"resuming {output_dir}: all {total} groups already finished, recomputing the results"
    return (
        f"resuming {output_dir}: {finished} of {total} groups already finished, training the other {total - finished}"
    )


def train_jobs(
    experiment: Experiment, engine: Engine, store: CheckpointStore, finished: dict[int, FinishedJob] | None = None
) -> dict[int, FinishedJob]:
    """Every job of the experiment: ``finished`` ones (resume) kept, the others trained and
    checkpointed one by one."""
    finished = dict(finished or {})
    pending = [job for job in experiment.jobs if job.job_id not in finished]
    with JobProgress(total_jobs=len(experiment.jobs), done=len(finished), rounds=experiment.num_rounds) as progress:

        def on_job_done(result: FinishedJob) -> None:
            store.save(result.job_id, result.params, result.history, result.predictions)
            finished[result.job_id] = result
            progress.job_done()

        if pending:
            engine.train(experiment, pending, on_job_done=on_job_done, on_progress=progress.round_done)
    return finished


LAST_ROUNDS = 10  # the FLIP tables' window: mean over the last 10 rounds beside the final round


def last_rounds_summary(history: list[dict], *, num_rounds: int) -> dict[str, float | None]:
    """Clean accuracy and attack success rate averaged over the last :data:`LAST_ROUNDS` rounds."""
    return {
        f"{key}_last{LAST_ROUNDS}_mean": mean_over_last_rounds(history, key, last_round=num_rounds, window=LAST_ROUNDS)
        for key in ("accuracy", "attack_success_rate")
    }


GROUP_METRICS = ("accuracy", "attack_success_rate")


def spread_over_groups(histories: list[list[dict]]) -> list[dict]:
    """Per evaluated round, each metric over the groups that measured it: mean, population
    standard deviation, min and max (e.g. ``accuracy_mean``), and ``num_groups`` counted."""
    by_round: dict[int, list[dict]] = {}
    for history in histories:
        for record in history:
            if any(key in record for key in GROUP_METRICS):
                by_round.setdefault(int(record["round"]), []).append(record)
    rounds = []
    for server_round, records in sorted(by_round.items()):
        entry: dict = {"round": server_round, "num_groups": len(records)}
        for key in GROUP_METRICS:
            values = np.array([record[key] for record in records if record.get(key) is not None], dtype=np.float64)
            if values.size:
                entry.update(
                    {
                        f"{key}_mean": float(values.mean()),
                        f"{key}_std": float(values.std()),
                        f"{key}_min": float(values.min()),
                        f"{key}_max": float(values.max()),
                    }
                )
        rounds.append(entry)
    return rounds


def write_job_metrics(
    experiment: Experiment, finished: dict[int, FinishedJob], output_dir: Path, *, rule_name: str
) -> None:
    """metrics.json, final_model.pt and accuracy.png: the first job (the single model) and, in an
    ensemble of several jobs, every group's accuracy per round (``groups``; a band in the plot)."""
    first = finished[min(finished)]
    is_ensemble = len(finished) > 1
    group_rounds = spread_over_groups([finished[job_id].history for job_id in sorted(finished)])
    groups = {"num_groups": len(finished), "job_ids": sorted(finished), "rounds": group_rounds}
    write_json(
        output_dir / "metrics.json",
        {
            "job_id": first.job_id,
            **last_rounds_summary(first.history, num_rounds=experiment.num_rounds),
            "rounds": first.history,
            **({"groups": groups} if is_ensemble else {}),
        },
    )
    write_torch(output_dir / "final_model.pt", experiment.model_from_params(first.params).state_dict())
    title = f"{len(finished)} groups: {rule_name}" if is_ensemble else f"job {first.job_id}: {rule_name}"
    plot_accuracy(first.history, output_dir / "accuracy.png", title=title, groups=group_rounds if is_ensemble else None)


def run_summary(cfg: DictConfig, experiment: Experiment, engine: Engine, finished: dict[int, FinishedJob]) -> dict:
    """What summary.json records about the run besides the certificate."""
    last = finished[min(finished)].history[-1]
    return {
        "engine": engine.name,
        **({"client_training": engine.client_training} if engine.client_training else {}),
        "num_clients": experiment.federation.num_clients,
        "num_rounds": experiment.num_rounds,
        "num_malicious": len(experiment.malicious_ids),
        "attack": OmegaConf.select(cfg, "attack._target_"),
        "strategy": OmegaConf.select(cfg, "strategy._target_"),
        "defense": OmegaConf.select(cfg, "defense._target_"),
        "dataset": OmegaConf.select(cfg, "dataset._target_"),
        "final_accuracy": last.get("accuracy"),
        "final_attack_success_rate": last.get("attack_success_rate"),
        **last_rounds_summary(finished[min(finished)].history, num_rounds=experiment.num_rounds),
        **{
            key: last[key]
            for key in ("rejected_clean", "rejected_triggered", "raw_accuracy", "raw_attack_success_rate")
            if key in last
        },
        "rejected_replies": int(sum(r["rejected"] for job in finished.values() for r in job.history)),
    }


def run(cfg: DictConfig, *, engine: Engine | None = None, checked: Experiment | None = None) -> dict:
    """Run the configured job end to end and write every result file; return the summary.
    ``checked``: the experiment the CLI's preflight built for this run; its data is reused."""
    started = time.perf_counter()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's state DB migrations, every run
    configure_torch(threads=1)
    cfg = with_absolute_paths(cfg)  # before build_experiment serializes it for the workers
    experiment = build_experiment(cfg, loaded_by=checked)
    output_dir = Path(str(cfg.output_dir))
    store = CheckpointStore(output_dir / "jobs", digest=config_digest(cfg))
    kept: dict[int, FinishedJob] = {}
    if bool(cfg.resume):  # checked before anything is written: a refused resume changes no file
        kept = load_finished_jobs(cfg, experiment, output_dir, store)
        logger.info(resume_line(output_dir, finished=len(kept), total=len(experiment.jobs)))
    engine = engine if engine is not None else instantiate(cfg.engine)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(output_dir / "config.yaml", experiment.config_yaml)
    if not bool(cfg.resume):
        store.clear()

    finished = train_jobs(experiment, engine, store, kept)

    cost = write_participation(experiment, [job.history for job in finished.values()], output_dir / "participation.csv")
    first = finished[min(finished)]
    write_job_metrics(experiment, finished, output_dir, rule_name=str(cfg.strategy._target_).rsplit(".", 1)[-1])
    backdoor = write_backdoor_plot(experiment, first.params, output_dir / "backdoor.png")
    predictions = voter_predictions(experiment, finished)
    write_npy(output_dir / "predictions.npy", predictions)
    votes = votes_from_predictions(predictions, num_labels=experiment.test.num_classes)
    if isinstance(votes, np.ndarray):
        write_npy(output_dir / "votes.npy", votes)
    write_npy(output_dir / "labels.npy", experiment.test.y)
    write_npy(output_dir / "num_labels.npy", np.asarray(experiment.test.num_classes))
    extra = {
        "num_jobs": len(experiment.jobs),
        **run_summary(cfg, experiment, engine, finished),
        "confidence_roc_auc": None if backdoor is None else backdoor["roc_auc"],
        **ensemble_attack_success(experiment, {job_id: job.params for job_id, job in finished.items()}),
        "cost": cost,
        "wall_time_seconds": time.perf_counter() - started,
    }
    summary = write_certificate_report(
        experiment.ensemble,
        votes,
        experiment.test.y,
        output_dir,
        num_clients=experiment.federation.num_clients,
        seed=experiment.seed,
        extra=extra,
    )
    logger.info("results in %s", output_dir)
    return summary
