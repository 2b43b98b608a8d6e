"""Each job's model predicts the test set once per run: its final evaluation in the engine gives
the votes' predictions, which the checkpoint keeps, so a resumed job is not evaluated again."""

import numpy as np
import pytest
import torch

import fedshield.run
import fedshield.server.evaluation
from fedshield.config import build_experiment
from fedshield.run import run, votes_from_predictions
from fedshield.task.training import predict_logits
from helpers import job_params, tiny_config

pytestmark = pytest.mark.slow

NUM_GROUPS = 3
# eval_every=0: the only evaluation inside the engine is the final one, at the last round.
FLCERT = [
    "ensemble=flcert_d",
    f"ensemble.num_groups={NUM_GROUPS}",
    "num_clients=12",
    "engine=local",
    "engine.workers=1",
    "eval_every=0",
]


@pytest.fixture
def test_set_passes(monkeypatch):
    """Counts the passes of any model over the test set, wherever the pipeline predicts."""
    passes = []

    def counting_predict_logits(model, x, **kwargs):
        logits = predict_logits(model, x, **kwargs)
        passes.append(len(x))
        return logits

    monkeypatch.setattr(fedshield.run, "predict_logits", counting_predict_logits)
    monkeypatch.setattr(fedshield.server.evaluation, "predict_logits", counting_predict_logits)
    return passes


def recomputed_predictions(cfg, run_dir) -> np.ndarray:
    experiment = build_experiment(cfg)
    x = experiment.test_tensors[0]
    return np.stack(
        [
            predict_logits(experiment.model_from_params(job_params(run_dir, job_id)), x).argmax(1).numpy()
            for job_id in range(NUM_GROUPS)
        ]
    )


def test_each_job_predicts_the_test_set_once_and_votes_match_the_saved_params(tmp_path, test_set_passes):
    cfg = tiny_config(tmp_path, *FLCERT)
    run(cfg)
    num_test = len(build_experiment(cfg).test.y)
    assert test_set_passes.count(num_test) == NUM_GROUPS

    predictions = np.load(tmp_path / "run" / "predictions.npy")
    np.testing.assert_array_equal(predictions, recomputed_predictions(cfg, tmp_path / "run"))
    np.testing.assert_array_equal(
        np.load(tmp_path / "run" / "votes.npy"), votes_from_predictions(predictions, num_labels=10)
    )


def test_resume_reuses_saved_predictions_and_computes_missing_ones(tmp_path, test_set_passes):
    cfg = tiny_config(tmp_path, *FLCERT)
    run(cfg)
    reference = {name: np.load(tmp_path / "run" / name) for name in ("predictions.npy", "votes.npy")}
    num_test = len(reference["predictions.npy"][0])

    test_set_passes.clear()
    run(tiny_config(tmp_path, *FLCERT, "resume=true"))
    assert test_set_passes.count(num_test) == 0  # every checkpoint carries its predictions

    # A checkpoint written before predictions were saved: resumed, its predictions recomputed.
    old_checkpoint = tmp_path / "run" / "jobs" / "job_00001.pt"
    payload = torch.load(old_checkpoint, weights_only=True)
    del payload["predictions"]
    torch.save(payload, old_checkpoint)
    test_set_passes.clear()
    run(tiny_config(tmp_path, *FLCERT, "resume=true"))
    assert test_set_passes.count(num_test) == 1
    for name, expected in reference.items():
        np.testing.assert_array_equal(np.load(tmp_path / "run" / name), expected)


def test_crfl_votes_come_from_the_noisy_copies_not_the_job_model(tmp_path, test_set_passes):
    copies = 3
    cfg = tiny_config(tmp_path, "ensemble=crfl", f"ensemble.num_noisy_models={copies}", "engine=local", "eval_every=0")
    run(cfg)
    experiment = build_experiment(cfg)
    x = experiment.test_tensors[0]
    voters = experiment.ensemble.voters({0: job_params(tmp_path / "run")}, seed=experiment.seed)
    expected = np.stack([predict_logits(experiment.model_from_params(p), x).argmax(1).numpy() for p in voters])
    np.testing.assert_array_equal(np.load(tmp_path / "run" / "predictions.npy"), expected)
    assert test_set_passes.count(len(x)) == 1 + copies  # the job's final evaluation, then each copy
