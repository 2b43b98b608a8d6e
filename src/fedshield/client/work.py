"""What one client computes in one round of one FL job, honest or malicious.

Phase 1 (every sampled client): train from the global model, with the attacker's poisoned
batches or the defense's hardening batches when they apply; reply with the update.
Phase 2 (sampled malicious clients, full-knowledge attacks only): craft a reply from the
round's phase-1 updates (see :mod:`fedshield.attacks.base` for the channel).

Both drivers call these two functions: the in-process engine directly, the Flower ClientApp
from its message handlers.
"""

from __future__ import annotations

from fedshield.attacks.base import CraftContext
from fedshield.experiment import Experiment
from fedshield.flip.inversion import mask_share_within
from fedshield.models.params import get_flat_params
from fedshield.task.defense import ClientState, DefenseRound
from fedshield.task.determinism import derive_seed, torch_generator
from fedshield.task.messages import ClientReply, CraftRequest, TrainRequest
from fedshield.task.training import BatchTransform, local_train


def train_step(
    experiment: Experiment, request: TrainRequest, state: ClientState | None = None
) -> tuple[ClientReply, ClientState]:
    """Phase 1 for ``request.user_id``; returns its reply and its new per-job state."""
    user_id, server_round = request.user_id, request.server_round
    model = experiment.work_model(request.global_params)
    x, y = experiment.client_tensors(user_id)
    generator = torch_generator(derive_seed("client", request.job.seed, server_round, user_id))
    attack = experiment.attack_for(user_id)
    attacking = experiment.is_malicious(user_id) and attack.is_active(server_round)
    state = dict(state or {})
    transform: BatchTransform | None = None
    training = experiment.training
    defense: DefenseRound | None = None
    if attacking:
        transform = attack.prepare(model, x, y, server_round=server_round, generator=generator)
        training = attack.training_config(training)
    elif experiment.hardening is not None and not experiment.is_malicious(user_id):
        defense = experiment.hardening.start(model, x, y, server_round=server_round, state=state, generator=generator)
        transform = defense.transform
    loss = local_train(model, x, y, config=training, generator=generator, batch_transform=transform)
    # Trained on the client's device; replied on the server's (a no-op when they are the same).
    update = get_flat_params(model).to(request.global_params.device) - request.global_params
    if attacking:
        update = attack.post_process(update, server_round=server_round, num_sampled=request.num_sampled)
    metrics: dict[str, float] = {}
    if defense is not None:
        state = defense.new_state()
        metrics = {**defense.diagnostics(), **trigger_recovery(experiment, defense, x.shape[-2:])}
    return ClientReply(update, experiment.num_examples(user_id), loss, metrics), state


def trigger_recovery(experiment: Experiment, defense: DefenseRound, image_size: tuple[int, ...]) -> dict[str, float]:
    """How much of the defense's triggers lies on the attack's real trigger (a diagnostic).

    ``flip_on_trigger``: over the masks the defense used that point to the attack's target
    label, the largest share of mask mass (L1) inside the real trigger's pixels; 0 when none
    points there. Computed here, outside the defense, which never receives the attack's
    trigger; the number only goes into the reply's metrics.
    """
    target = experiment.attack.target_label
    region = experiment.attack.trigger_region(*image_size) if target is not None else None
    if region is None:
        return {}
    shares = [
        mask_share_within(mask, region)
        for label, mask in defense.found_masks()
        if label == target and float(mask.abs().sum()) > 0
    ]
    return {"flip_on_trigger": max(shares, default=0.0), "flip_found_target": float(bool(shares))}


def craft_step(experiment: Experiment, request: CraftRequest) -> ClientReply:
    """Phase 2 for malicious ``request.user_id``: its crafted update from the round's phase-1 updates."""
    context = CraftContext(
        server_round=request.server_round,
        own_id=request.user_id,
        malicious_ids=experiment.crafting_clients(request.server_round, request.sampled),
        sampled_ids=request.sampled,
        updates=request.updates,
        weights=request.weights,
        global_params=request.global_params,
        generator=torch_generator(derive_seed("craft", request.job.seed, request.server_round)),
    )
    update = experiment.attack_for(request.user_id).craft(context)
    return ClientReply(update, experiment.num_examples(request.user_id), float("nan"))
