"""Can FLIP's inversion find the backdoor in a saved model? A diagnostic for the FLIP table.

Run: ``.venv/bin/python bench/flip_inversion_check.py RUN_DIR [defense.KEY=VALUE ...]``, with
RUN_DIR a finished backdoor run (e.g. the FedAvg row of ``bench/flip_table.py``, whose final
model carries the backdoor). On that run's final model and data it prints

- the plain universal inversion towards the attack's target (Neural Cleanse, as in
  ``fedshield.flip.inversion.invert_universal``) for a few budgets: mask L1, pixels above 0.5,
  attack success, and the share of the mask's mass on the real trigger's pixels;
- FLIP's client-side warm-up (``FlipHardening.start``, the settings of ``conf/defense/flip.yaml``
  changed by the given overrides) on the first benign clients: the same figures for the
  target's trigger, and which triggers are plausible (what the client would harden with).

The real trigger is used here only to score the inverted masks, never by the inversion.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="FLIP settings, e.g. defense.max_mask_fraction=0.04")
    parser.add_argument("--clients", type=int, default=6, help="benign clients whose warm-up is run")
    args = parser.parse_args(argv)

    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from fedshield.config import build_experiment, compose_config
    from fedshield.flip import FlipHardening
    from fedshield.flip.inversion import InversionConfig, invert_universal, is_plausible, mask_share_within
    from fedshield.server.evaluation import triggered_test_set
    from fedshield.task.determinism import torch_generator

    experiment = build_experiment(OmegaConf.load(args.run_dir / "config.yaml"))
    flip = instantiate(compose_config(["defense=flip", *args.overrides]).defense, _convert_="all")
    target = experiment.attack.target_label
    state = torch.load(args.run_dir / "final_model.pt", weights_only=True)
    model = experiment.new_model()
    model.load_state_dict(state)
    model.eval()
    x, y = experiment.test_tensors
    stamped_x, _ = triggered_test_set(experiment)
    clean_of_other_label = x[y != target][0]
    trigger_pixels = (stamped_x[0] != clean_of_other_label).any(0, keepdim=True).cpu().numpy()
    with torch.no_grad():
        asr = float((model(stamped_x).argmax(1) == target).float().mean())
    print(f"{args.run_dir}: ASR of the saved model {asr:.3f}; the trigger changes {int(trigger_pixels.sum())} pixels")

    def describe(trigger) -> str:
        mask = trigger.mask
        return (
            f"mask L1 {float(mask.sum()):5.1f}, pixels > 0.5 {int((mask > 0.5).sum()):3d}, "
            f"success {trigger.attack_success:.2f}, on the trigger {mask_share_within(mask, trigger_pixels):.2f}"
        )

    print("\nplain universal inversion (test inputs 0-399):")
    for steps in (150, 400):
        for per_label in (1, 3, 10):
            found = invert_universal(
                model,
                x[:400],
                y[:400],
                target=target,
                generator=torch_generator(0),
                config=InversionConfig(steps=steps, min_success=flip.min_inversion_success),
                samples_per_label=per_label,
            )
            print(f"  {steps} steps, {per_label} per label: {describe(found)}")

    print(
        f"\nFLIP's warm-up on {args.clients} benign clients ({' '.join(args.overrides) or 'conf/defense/flip.yaml'}):"
    )
    hardening = FlipHardening(flip)
    benign = [uid for uid in experiment.federation.user_ids if uid not in experiment.malicious_ids]
    for uid in benign[: args.clients]:
        local = experiment.new_model()
        local.load_state_dict(state)
        cx, cy = experiment.client_tensors(uid)
        round_ = hardening.start(local, cx, cy, server_round=flip.start_round, state={}, generator=torch_generator(uid))
        towards = [t for t in round_.triggers if t.target_label == target]
        plausible = [
            t.target_label for t in round_.triggers if is_plausible(t, max_mask_fraction=flip.max_mask_fraction)
        ]
        line = describe(towards[0]) if towards else "no inversion towards the target"
        print(f"  client {uid} ({len(cy)} samples): {line}; plausible triggers to labels {plausible}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    raise SystemExit(main())
