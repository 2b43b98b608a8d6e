"""The ``fedshield`` command: Hydra overrides run a job; ``certify`` and ``report`` act on results.

fedshield dataset=mnist5k model=cnn num_rounds=20
fedshield --multirun ensemble.num_groups=10,20 attack.num_malicious=0,5
fedshield certify RUN_DIR ensemble.bounds=simultaneous
"""

from __future__ import annotations

import logging
import sys

import fedshield  # noqa: F401  (sets the no-network environment switches first)
from fedshield.config import CONFIG_DIR as _CONFIG_PATH

CONFIG_DIR = str(_CONFIG_PATH)


def _certify(argv: list[str]) -> None:
    from fedshield import commands

    commands.certify(argv)


def _report(argv: list[str]) -> None:
    from fedshield import commands

    commands.report(argv)


# Loaded on use: `fedshield --help` and a run need not import the results code.
SUBCOMMANDS = {"certify": _certify, "report": _report}


def _run_main() -> None:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
    def _main(cfg: DictConfig) -> None:
        from fedshield.run import run

        summary = run(cfg)
        _print_summary(summary, cfg)

    _main()


def _print_summary(summary: dict, cfg) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{summary.get('mode')}[/bold]: certified accuracy CA@m (m malicious clients)")
    table = Table()
    table.add_column("m", justify="right")
    table.add_column("CA@m", justify="right")
    for m, value in list(summary["certified_accuracy"].items())[:16]:
        table.add_row(m, f"{value:.3f}")
    console.print(table)
    if summary.get("final_accuracy") is not None:
        console.print(f"job 0 clean accuracy: {summary['final_accuracy']:.4f}")
    if summary.get("final_attack_success_rate") is not None:
        console.print(f"job 0 attack success rate: {summary['final_attack_success_rate']:.4f}")
    console.print(f"results in [bold]{cfg.output_dir}[/bold]")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        command = sys.argv.pop(1)
        SUBCOMMANDS[command](sys.argv[1:])
        return
    _run_main()


if __name__ == "__main__":
    main()
