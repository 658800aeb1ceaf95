"""The VAE objective (negative ELBO) as named terms, its value over many images, and the
KL-weight schedules.

All terms are in nats per image: summed over pixels / latent dimensions, averaged over the
batch (Kingma & Welling 2014, eq. 10). Training and evaluation weight the terms the same way:
``loss = recon + weight * kl``. The reconstruction term is the model's likelihood
(:mod:`vaepipe.models.likelihoods`), the KL term its prior's (:mod:`vaepipe.models.priors`; in
closed form for N(0, I), their appendix B). :func:`elbo_per_image` is the one code path that
validation, the evaluation and the beta sweep's table score models with.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from vaepipe.models.batches import EVAL_BATCH, inference, to_unit_float
from vaepipe.models.likelihoods import Likelihood
from vaepipe.models.vae import VAE


class Terms(NamedTuple):
    loss: torch.Tensor   # recon + weight * kl, batch mean
    recon: torch.Tensor  # -log p(x | z), batch mean
    kl: torch.Tensor     # KL(q(z | x) || p(z)), batch mean


def vae_loss(model: VAE, x: torch.Tensor, out: torch.Tensor, mu: torch.Tensor,
             logvar: torch.Tensor, z: torch.Tensor, kl_weight: float = 1.0) -> Terms:
    """Batch-mean negative ELBO with a weighted KL term; ``kl_weight=1`` gives the NELBO.
    ``out, mu, logvar, z`` are ``model(x)``'s outputs for pixels ``x``."""
    recon = model.likelihood.recon_per_sample(out, x).mean()
    kl = model.kl(mu, logvar, z).mean()
    return Terms(recon + kl_weight * kl, recon, kl)


def elbo_per_image(model: VAE, images: torch.Tensor, pixels: str = "levels", seed: int = 0,
                   likelihood: Likelihood | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction term -log p(x | z) and KL of each of the uint8 ``images``, in nats.

    ``pixels``: how the images become model inputs (:func:`to_unit_float`); ``likelihood``
    scores the decoder's output with another likelihood than the model's own (the 8-bit rate
    scores a Bernoulli decoder as a continuous Bernoulli). One posterior sample per image (and
    one dequantization) from a generator seeded with ``seed``, so the same weights always give
    the same numbers (comparable across epochs). Float64 (N,) tensors on the images' device.
    """
    gen = torch.Generator(device=images.device).manual_seed(seed)
    likelihood = likelihood or model.likelihood
    recon, kl = [], []
    with inference(model):
        for i in range(0, len(images), EVAL_BATCH):
            x = to_unit_float(images[i:i + EVAL_BATCH], pixels, gen)
            out, mu, logvar, z = model(x, gen)
            recon.append(likelihood.recon_per_sample(out, x).double())
            kl.append(model.kl(mu, logvar, z).double())
    return torch.cat(recon), torch.cat(kl)


def evaluate_elbo(model: VAE, images: torch.Tensor, beta: float, pixels: str = "levels",
                  seed: int = 0) -> dict[str, float]:
    """Mean loss (at KL weight ``beta``), recon, KL and NELBO over uint8 ``images``: the means
    of :func:`elbo_per_image`."""
    recon, kl = (t.mean().item() for t in elbo_per_image(model, images, pixels, seed))
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl, "nelbo": recon + kl}


def kl_weight(schedule: str, epoch: int, epochs: int, beta: float, warmup_epochs: int = 0,
              cycles: int = 4, cycle_ratio: float = 0.5) -> float:
    """KL weight for 1-based ``epoch``.

    - ``constant``: ``beta`` throughout.
    - ``linear``: ``beta * min(1, epoch / warmup_epochs)`` (recipe 000's warm-up, 25 epochs);
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
