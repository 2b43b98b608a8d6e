"""CRFL (Xie et al., "CRFL: Certifiably Robust Federated Learning against Backdoor Attacks",
ICML 2021): the server clips the global model and perturbs it with Gaussian noise every round,
and predicts by a majority vote over M noisy copies of the final model (parameter smoothing).

CRFL certifies against a *bounded* backdoor: its radius depends on the attacker's update norm
and data magnitude. FLCert's threat model lets a malicious client change its data and updates
without bound, under which no such radius exists: CRFL's CA@m is 0 for every m >= 1, and we
report its CA@0 (the smoothed model's accuracy), as the FLCert paper does (Fig. 3).
"""

from __future__ import annotations

import torch

from fedshield.task.determinism import derive_seed, torch_generator


def clip_parameters(params: torch.Tensor, *, max_norm: float) -> torch.Tensor:
    r"""Project the parameter vector onto the L2 ball of radius rho: :math:`w / \max(1, \|w\|_2 / \rho)`."""
    if not max_norm > 0:
        raise ValueError(f"ensemble.clip_norm (rho) must be > 0; got {max_norm}")
    norm = float(torch.linalg.vector_norm(params.double()))
    return params if norm <= max_norm else params * (max_norm / norm)


def perturb_parameters(params: torch.Tensor, *, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Add i.i.d. N(0, sigma^2) noise to every parameter (drawn on the CPU, so device-independent)."""
    if sigma < 0:
        raise ValueError(f"ensemble.noise_std (sigma) must be >= 0; got {sigma}")
    noise = torch.randn(params.shape, generator=generator, dtype=params.dtype)
    return params + sigma * noise.to(params.device)


def crfl_round(
    params: torch.Tensor, *, max_norm: float, sigma: float, job_seed: int, server_round: int
) -> torch.Tensor:
    """One round of CRFL's server step: clip to rho, then add the seeded training noise."""
    generator = torch_generator(derive_seed("crfl-train-noise", job_seed, server_round))
    return perturb_parameters(clip_parameters(params, max_norm=max_norm), sigma=sigma, generator=generator)


def smoothed_copies(params: torch.Tensor, *, sigma: float, num_copies: int, seed: int):
    """Yield the M noisy copies of the final model that vote at test time (seeded per copy)."""
    for copy in range(num_copies):
        yield perturb_parameters(
            params, sigma=sigma, generator=torch_generator(derive_seed("crfl-test-noise", seed, copy))
        )
