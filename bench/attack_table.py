"""Clean accuracy and attack success rate of each rule under no attack and its matching attack.

    .venv/bin/python bench/attack_table.py [--mnist-root ../shared/data/mnist] [--out attack_table.csv]

Real MNIST (the 10k set split 8,000 / 2,000), 20 clients (Fang et al.'s degree of non-IID
q = 0.5), all sampled every round, 4 of them malicious, the FLCert CNN, 10 rounds of 5 local
steps; the backdoor attackers (2) boost by n / m = 10 and train 100 local steps (model
replacement). Prints a markdown table and writes a CSV.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fedshield.config import compose_config
from fedshield.files import write_csv
from fedshield.run import run

ROWS = [
    ("fedavg", [], "none", []),
    ("fedavg", [], "zero_update", ["attack.num_malicious=4"]),
    ("fedavg", [], "backdoor", ["attack.num_malicious=2", "attack.scale=10", "attack.local_steps=100"]),
    ("trimmed_mean", ["strategy.num_trimmed=4"], "none", []),
    ("trimmed_mean", ["strategy.num_trimmed=4"], "trim", ["attack.num_malicious=4"]),
    ("median", [], "none", []),
    ("median", [], "trim", ["attack.num_malicious=4"]),
    ("krum", ["strategy.num_malicious=4"], "none", []),
    ("krum", ["strategy.num_malicious=4"], "krum", ["attack.num_malicious=4"]),
    ("fltrust", [], "none", []),
    ("fltrust", [], "trim", ["attack.num_malicious=4"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--out", type=Path, default=Path("attack_table.csv"))
    args = parser.parse_args()
    common = [
        "dataset=mnist",
        f"dataset.root={args.mnist_root}",
        "model=cnn",
        "partition=fang",
        "num_clients=20",
        "sample_fraction=1.0",
        "num_rounds=10",
        "client.local_steps=5",
        "client.learning_rate=0.1",
        "engine=local",
        "engine.workers=1",
        "eval_every=0",
    ]
    table = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, (rule, rule_options, attack, attack_options) in enumerate(ROWS):
            overrides = [*common, f"strategy={rule}", *rule_options, f"attack={attack}", *attack_options]
            summary = run(compose_config(overrides, output_dir=Path(scratch) / str(index)))
            asr = summary["final_attack_success_rate"]
            table.append([rule, attack, summary["num_malicious"], summary["final_accuracy"], asr])
            print(
                f"| {rule} | {attack} | {summary['num_malicious']} | {summary['final_accuracy']:.3f} | "
                f"{'-' if asr is None else f'{asr:.3f}'} |",
                flush=True,
            )
    write_csv(args.out, ["rule", "attack", "num_malicious", "clean_accuracy", "attack_success_rate"], table)


if __name__ == "__main__":
    main()
