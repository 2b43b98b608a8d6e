"""The Flower ServerApp for ``flwr run .`` (simulation or a SuperLink with SuperNodes).

Flower's app config is flat TOML, so it carries Hydra overrides as one string::

    flwr run . <connection> --run-config 'overrides="num_rounds=2 ensemble=flcert_d" output-dir="/tmp/out"'

The app composes the same Hydra config ``fedshield`` would and runs the same pipeline
(:func:`fedshield.run.run`) on the Grid it is given, through
:class:`~fedshield.engines.flower.grid.GridEngine`; each SuperNode runs
:mod:`fedshield.engines.flower.client_app`, either with ``partition-id`` (0..n-1) in its node
config (one user) or without (a pool node: any user, so a few nodes serve many clients; start
the run with ``engine.min_nodes`` set to their number to wait for all of them).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedshield.config import compose_config, split_overrides
from fedshield.engines.flower.grid import GridEngine
from fedshield.run import run

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    overrides = split_overrides(str(run_config.get("overrides", "")))
    if "num-server-rounds" in run_config and not any(o.startswith("num_rounds=") for o in overrides):
        overrides.append(f"num_rounds={int(run_config['num-server-rounds'])}")
    cfg = compose_config(overrides, output_dir=str(run_config.get("output-dir", "outputs/flwr-run")))
    engine = GridEngine(
        grid,
        groups_per_wave=int(cfg.engine.get("groups_per_wave", 50)),
        discovery_timeout=float(cfg.engine.get("discovery_timeout", 300.0)),
        min_nodes=cfg.engine.get("min_nodes", 1),
    )
    run(cfg, engine=engine)
