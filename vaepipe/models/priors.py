"""The latent prior p(z) of a VAE: one class each, registered by name in :data:`PRIORS`.

A prior is a module of its model (a learned prior, such as a mixture over pseudo-inputs, has
weights of its own and may run the model's encoder, which every method receives). It gives
everything the pipeline asks of p(z): draws for samples, FID and the figures, log p(z) for the
importance-weighted bound, and the KL term of the ELBO. Adding one is one subclass here with
a ``name`` (the params value, ``mlp.prior``); a checkpoint stores the name in ``model_args``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vaepipe.config import Params, TrainConfig, check_name, register_check

PRIORS: dict[str, type["Prior"]] = {}

# the model's encoder: images (B, C, H, W) in [0, 1] -> (mu, logvar), each (B, Z)
Encoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Prior(nn.Module):
    """p(z) over ``latent_dim`` dimensions."""

    name: str = ""
    title: str = ""  # how figures and tables write it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            PRIORS[cls.name] = cls

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def sample(self, n: int, generator: torch.Generator, encoder: Encoder) -> torch.Tensor:
        """``n`` latents (n, Z) drawn with ``generator``, on the generator's device."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor, encoder: Encoder) -> torch.Tensor:
        """log p(z) summed over latent dimensions: (..., Z) -> (...)."""
        raise NotImplementedError

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor,
           encoder: Encoder) -> torch.Tensor:
        """KL(q(z | x) || p(z)) per image, (B,): in closed form where the prior has one, else
        the one-sample estimate log q(z | x) - log p(z) at the posterior draw ``z``."""
        log_q = -0.5 * (((z - mu).pow(2) / logvar.exp()) + logvar + math.log(2 * math.pi))
        return log_q.sum(dim=1) - self.log_prob(z, encoder)

    def pooled_draws(self, n: int, seed: int, encoder: Encoder) -> np.ndarray:
        """``n`` values of z from the prior, pooled over its dimensions and seeded: the
        reference the figures draw beside the posterior's histograms."""
        per_dim = -(-n // self.latent_dim)
        with torch.no_grad():
            z = self.sample(per_dim, torch.Generator().manual_seed(seed), encoder)
        return z.flatten().cpu().numpy()[:n]


class StandardNormal(Prior):
    """N(0, I), the recipes' prior; its KL from a diagonal Gaussian is in closed form."""

    name = "standard_normal"
    title = "N(0, I)"

    def sample(self, n, generator, encoder):
        return torch.randn((n, self.latent_dim), generator=generator, device=generator.device)

    def log_prob(self, z, encoder):
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)

    def kl(self, mu, logvar, z, encoder):
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)

    def pooled_draws(self, n, seed, encoder):
        # every dimension is N(0, 1): one numpy draw of n values
        return np.random.default_rng(seed).standard_normal(n)


def build_prior(name: str, latent_dim: int) -> Prior:
    if name not in PRIORS:
        raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {name!r}")
    return PRIORS[name](latent_dim)


@register_check
def _check_sections(params: Params) -> None:
    for key, section in params:
        if isinstance(section, TrainConfig):
            check_name(f"{key}.prior", section.prior, PRIORS)
