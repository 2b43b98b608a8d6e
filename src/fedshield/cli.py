"""The ``fedshield`` command: Hydra overrides run a job; ``resume``, ``certify`` and ``report``
act on run folders.

fedshield dataset=mnist5k model=cnn num_rounds=20
fedshield --multirun ensemble.num_groups=10,20 attack.num_malicious=0,5
fedshield resume RUN_DIR
fedshield certify RUN_DIR ensemble.bounds=simultaneous
fedshield report SWEEP_DIR

A user's mistake (a field out of range, a missing folder, a corrupt file) is one line,
``error: <field>: <what is wrong>``, with exit status 2, before any folder is created or any
training starts; ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import fedshield  # noqa: F401  (sets the no-network environment switches first)
from fedshield.config import CONFIG_DIR as _CONFIG_PATH

if TYPE_CHECKING:
    from fedshield.experiment import Experiment

CONFIG_DIR = str(_CONFIG_PATH)
USAGE_ERROR = 2  # exit status of a refused command (argparse's convention)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user's mistake into ``error: <line>`` and exit status 2; let bugs raise."""
    from fedshield.config.user_errors import describe_user_error

    try:
        yield
    except Exception as error:
        line = describe_user_error(error)
        if line is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {line}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


def _resume(argv: list[str]) -> None:
    from fedshield.resume import resume

    _print_summary(*resume(argv))


def _certify(argv: list[str]) -> None:
    from fedshield import commands

    commands.certify(argv)


def _report(argv: list[str]) -> None:
    from fedshield import commands

    commands.report(argv)


# Loaded on use: `fedshield --help` and a run need not import the results code.
SUBCOMMANDS = {"resume": _resume, "certify": _certify, "report": _report}
# Hydra flags a run may carry; any other flag (--cfg, --info, --help, ...) is Hydra's to handle.
_RUN_FLAGS = {"-m", "--multirun"}


def _run_main(checked: Experiment | None = None) -> None:
    """The Hydra app; ``checked``, the preflight's build of a single run, lends the run its data."""
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
    def _main(cfg: DictConfig) -> None:
        from fedshield.run import run

        with user_errors():
            summary = run(cfg, checked=checked)
        _print_summary(summary, str(cfg.output_dir))

    _main()


def _check_run_command(argv: list[str]) -> Experiment | None:
    """Refuse a bad run before Hydra creates its folder; route ``resume=true`` to resume.
    Returns the built experiment of a single run (None for a sweep)."""
    from fedshield.config.preflight import check_run, check_runs
    from fedshield.resume import asks_for_resume, resume_in_place

    overrides = [item for item in argv if item not in _RUN_FLAGS]
    if asks_for_resume(overrides):
        _print_summary(*resume_in_place(overrides))  # without Hydra writing .hydra/ into the folder
        raise SystemExit(0)
    if len(overrides) < len(argv):
        check_runs(overrides, multirun=True)
        return None
    return check_run(overrides)


def _print_summary(summary: dict, output_dir: str) -> None:
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
    console.print(f"results in [bold]{output_dir}[/bold]")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:]
    if argv and argv[0] in SUBCOMMANDS:
        with user_errors():
            SUBCOMMANDS[argv[0]](argv[1:])
        return
    checked = None
    if all(item in _RUN_FLAGS or not item.startswith("-") for item in argv):
        with user_errors():
            checked = _check_run_command(argv)
    _run_main(checked)


if __name__ == "__main__":
    main()
