"""Fingerprint of what a set of small runs produce, to prove a refactor changed no result.

Run: ``.venv/bin/python bench/fingerprint.py OUTPUT_DIR [NAME ...] > before.txt`` on the old
tree, the same on the new one, then ``diff before.txt after.txt`` (empty: bit-identical).

Each config (``CONFIGS``; tiny, on the embedded mnist5k, ``engine=local`` with one worker) is
run, and one line is printed per config: SHA-256 prefixes of every group model's parameters and
of its round history (wall times left out, FLIP diagnostics included), of
``certification.csv`` and ``predictions.npy``, the CA@m curve and the ensemble attack success
rate. The configs cover FLCert-D and FLCert-P, Trim and Krum attacks, backdoors with and without
FLIP, DBA, the adaptive attacker, FLTrust, CRFL and FLIP inside FLCert.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

BASE = [
    "dataset=mnist5k",
    "model=logistic",
    "num_clients=12",
    "num_rounds=3",
    "sample_fraction=0.5",
    "client.local_steps=3",
    "client.batch_size=16",
    "engine=local",
    "engine.workers=1",
]
FLIP_SMALL = ["defense=flip", "defense.inversion_steps=5"]
CONFIGS = {
    "flcert_d_trim": [
        "ensemble=flcert_d",
        "ensemble.grouping=hash",  # the grouping of fingerprints recorded before #16 (drop on older trees)
        "ensemble.num_groups=2",
        "num_clients=20",
        "strategy=trimmed_mean",
        "attack=trim",
        "attack.num_malicious=2",
        "sample_fraction=1.0",
    ],
    "flcert_p_krum": [
        "ensemble=flcert_p",
        "ensemble.num_groups=4",
        "ensemble.group_size=8",
        "strategy=krum",
        "attack=krum",
        "attack.num_malicious=1",
        "sample_fraction=1.0",
    ],
    "backdoor_flip": ["model=cnn", "attack=backdoor", "attack.num_malicious=3", *FLIP_SMALL, "num_rounds=2"],
    "dba": ["attack=dba", "attack.num_malicious=4"],
    "adaptive": ["model=cnn", "attack=adaptive_flip", "attack.num_malicious=3", *FLIP_SMALL, "num_rounds=2"],
    "fltrust_lie": ["strategy=fltrust", "attack=lie", "attack.num_malicious=2"],
    "crfl_minmax": ["ensemble=crfl", "ensemble.num_noisy_models=5", "attack=min_max", "attack.num_malicious=2"],
    "single_shot": ["attack=backdoor_single_shot", "attack.num_malicious=2"],
    "flcert_flip": [
        "ensemble=flcert_d",
        "ensemble.grouping=hash",
        "ensemble.num_groups=2",
        "num_clients=16",
        "model=cnn",
        "attack=backdoor",
        "attack.num_malicious=3",
        *FLIP_SMALL,
        "defense.warm_inversion_steps=2",
        "defense.reinvert_every=1",
        "num_rounds=2",
    ],
}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprint(name: str, output: Path) -> dict:
    import numpy as np
    import torch

    from fedshield.config import compose_config
    from fedshield.run import run

    run_dir = output / name
    summary = run(compose_config([*BASE, *CONFIGS[name]], output_dir=run_dir))
    result: dict = {}
    for path in sorted((run_dir / "jobs").glob("job_*.pt")):
        payload = torch.load(path, weights_only=True)
        history = [{k: v for k, v in record.items() if k != "wall_time"} for record in payload["history"]]
        result[path.name] = [
            digest(payload["params"].numpy().tobytes()),
            digest(json.dumps(history, sort_keys=True).encode()),
        ]
    result["certification.csv"] = digest((run_dir / "certification.csv").read_bytes())
    result["predictions"] = digest(np.load(run_dir / "predictions.npy").tobytes())
    result["ca"] = summary["certified_accuracy"]
    result["ens"] = [summary.get("ensemble_attack_success_rate"), summary.get("voter_attack_success_rate_mean")]
    return result


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    output, names = Path(argv[0]), argv[1:] or list(CONFIGS)
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        print(f"error: unknown config(s) {unknown}; choose from {sorted(CONFIGS)}", file=sys.stderr)
        return 2
    for name in names:
        print(name, json.dumps(fingerprint(name, output), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
