"""The VAE objective (negative ELBO) as named terms, and the KL-weight schedules.

All terms are in nats per image: summed over pixels / latent dimensions, averaged over the
batch (Kingma & Welling 2014, eq. 10, with the Gaussian KL in closed form, their appendix B).
Training and evaluation weight the terms the same way: ``loss = recon + weight * kl``. The
reconstruction term is the decoder's likelihood, :mod:`vaepipe.models.likelihoods`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from vaepipe.models.likelihoods import recon_per_sample


class Terms(NamedTuple):
    loss: torch.Tensor   # recon + weight * kl, batch mean
    recon: torch.Tensor  # -log p(x | z), batch mean
    kl: torch.Tensor     # KL(q(z | x) || N(0, I)), batch mean


def kl_per_sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dims: (B, Z) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def vae_loss(out: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float = 1.0, likelihood: str = "bernoulli",
             obs_std: float = 1.0) -> Terms:
    """Batch-mean negative ELBO with a weighted KL term; ``kl_weight=1`` gives the NELBO.
    ``out`` is the decoder's output for pixels ``x``."""
    recon = recon_per_sample(out, x, likelihood, obs_std).mean()
    kl = kl_per_sample(mu, logvar).mean()
    return Terms(recon + kl_weight * kl, recon, kl)


def kl_weight(schedule: str, epoch: int, epochs: int, beta: float, warmup_epochs: int = 0,
              cycles: int = 4, cycle_ratio: float = 0.5) -> float:
    """KL weight for 1-based ``epoch``.

    - ``constant``: ``beta`` throughout.
    - ``linear``: ``beta * min(1, epoch / warmup_epochs)`` (seed 000's warm-up, 25 epochs);
      ``warmup_epochs=0`` means no warm-up.
    - ``cyclical``: Fu et al. 2019 ("Cyclical Annealing Schedule", NAACL), per epoch: the run
      is cut into ``cycles`` equal periods; in each the weight rises linearly from 0 to
      ``beta`` over the first ``cycle_ratio`` of the period, then holds at ``beta``.
    """
    if epoch < 1:
        raise ValueError(f"epoch is 1-based, got {epoch}")
    if schedule == "constant":
        return beta
    if schedule == "linear":
        return beta if warmup_epochs == 0 else beta * min(1.0, epoch / warmup_epochs)
    if schedule == "cyclical":
        period = epochs / cycles
        tau = ((epoch - 1) % period) / period  # position in the current cycle, in [0, 1)
        return beta * min(1.0, tau / cycle_ratio)
    raise ValueError(f"kl_schedule must be constant, linear or cyclical, got {schedule!r}")
