"""The latent prior p(z) of a VAE: one class each, registered by name in :data:`PRIORS`.

A prior is a module of its model (a learned prior, such as a mixture over pseudo-inputs, has
weights of its own and may run the model's encoder, which every method receives). It gives
everything the pipeline asks of p(z): draws for samples, FID and the figures, log p(z) for the
importance-weighted bound, and the KL term of the ELBO. Adding one is one subclass here with
a ``name`` (the params value, ``mlp.prior``) and, where it has settings of its own, their names
in ``options`` (keys of the same model section, as ``pseudo_inputs``); a checkpoint stores
:meth:`Prior.spec` in ``model_args``.
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


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension."""
    return (-0.5 * (((z - mu).pow(2) / logvar.exp()) + logvar + math.log(2 * math.pi))).sum(-1)


class Prior(nn.Module):
    """p(z) over ``latent_dim`` dimensions."""

    name: str = ""
    title: str = ""  # how figures and tables write it
    options: tuple[str, ...] = ()  # the model-section keys it takes as constructor arguments
    # whether each latent dimension of the prior is N(0, 1), so that per-dimension measures
    # against N(0, 1) (KL per dimension, the traversal span in prior standard deviations) hold
    standard_marginals: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            PRIORS[cls.name] = cls

    def __init__(self, latent_dim: int, image_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.latent_dim = latent_dim

    def spec(self) -> str | dict:
        """What a checkpoint stores: the name, with the options where the prior has any."""
        values = {k: getattr(self, k) for k in self.options}
        return {"name": self.name, **values} if values else self.name

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
        return log_normal(z, mu, logvar) - self.log_prob(z, encoder)

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
    standard_marginals = True

    def sample(self, n, generator, encoder):
        return torch.randn((n, self.latent_dim), generator=generator, device=generator.device)

    def log_prob(self, z, encoder):
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)

    def kl(self, mu, logvar, z, encoder):
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)

    def pooled_draws(self, n, seed, encoder):
        # every dimension is N(0, 1): one numpy draw of n values
        return np.random.default_rng(seed).standard_normal(n)


class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling 2018): the mixture of the model's own posteriors at
    ``pseudo_inputs`` learned images u_k, p(z) = 1/K sum_k q(z | u_k). The pseudo-inputs are
    weights of this module, clamped to [0, 1] (Hardtanh) and initialised ~ N(0.05, 0.01), as
    in the authors' code; the encoder runs on them at every call, so the prior follows the
    encoder as it trains. No closed-form KL: the ELBO uses the one-sample estimate."""

    name = "vampprior"
    title = "VampPrior"
    options = ("pseudo_inputs",)

    def __init__(self, latent_dim: int, image_shape: tuple[int, ...] | None = None,
                 pseudo_inputs: int = 500):
        super().__init__(latent_dim, image_shape)
        if image_shape is None:
            raise ValueError("the VampPrior needs the image shape of its pseudo-inputs")
        self.pseudo_inputs = pseudo_inputs
        self.raw_inputs = nn.Parameter(torch.empty(pseudo_inputs, *image_shape))
        nn.init.normal_(self.raw_inputs, 0.05, 0.01)

    def inputs(self) -> torch.Tensor:
        """The pseudo-inputs as images in [0, 1], (K, C, H, W)."""
        return nn.functional.hardtanh(self.raw_inputs, 0.0, 1.0)

    def components(self, encoder: Encoder) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixture's means and log-variances, each (K, Z). An encoder with BatchNorm
        encodes the pseudo-inputs with its running statistics (eval mode): they neither enter
        the statistics the data's batches keep nor depend on the batch they come with."""
        model = getattr(encoder, "__self__", None)
        norms = [] if not isinstance(model, nn.Module) else [
            m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        for m in norms:
            m.eval()
        try:
            return encoder(self.inputs())
        finally:
            for m in norms:
                m.train()

    def sample(self, n, generator, encoder):
        mu, logvar = self.components(encoder)
        device = generator.device
        pick = torch.randint(self.pseudo_inputs, (n,), generator=generator, device=device)
        eps = torch.randn((n, self.latent_dim), generator=generator, device=device)
        pick = pick.to(mu.device)
        return (mu[pick] + torch.exp(0.5 * logvar[pick]) * eps.to(mu.device)).to(device)

    def log_prob(self, z, encoder):
        mu, logvar = self.components(encoder)                      # (K, Z)
        inv_var = torch.exp(-logvar)
        const = -0.5 * (logvar.sum(-1) + self.latent_dim * math.log(2 * math.pi))  # (K,)
        flat = z.reshape(-1, self.latent_dim)
        out = []
        for part in flat.split(LOG_PROB_ROWS):   # (rows, K, Z) at most LOG_PROB_ROWS at a time
            sq = ((part[:, None, :] - mu[None]).pow(2) * inv_var[None]).sum(-1)  # (rows, K)
            out.append(torch.logsumexp(const[None] - 0.5 * sq, dim=1))
        return torch.cat(out).reshape(z.shape[:-1]) - math.log(self.pseudo_inputs)


# latents per block of the VampPrior's log-density: (rows, K, Z) floats at a time
LOG_PROB_ROWS = 256


def prior_spec(section: TrainConfig) -> str | dict:
    """The prior a params section names, with its options read from the section's keys of
    the same names (``pseudo_inputs`` for the VampPrior)."""
    cls = PRIORS[section.prior]
    values = {k: getattr(section, k) for k in cls.options}
    return {"name": section.prior, **values} if values else section.prior


def build_prior(spec: str | dict, latent_dim: int,
                image_shape: tuple[int, ...] | None = None) -> Prior:
    """A prior from its name or a checkpoint's spec ``{"name": ..., **options}``."""
    name, values = (spec, {}) if isinstance(spec, str) else (
        spec.get("name"), {k: v for k, v in spec.items() if k != "name"})
    if name not in PRIORS:
        raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {name!r}")
    return PRIORS[name](latent_dim, image_shape, **values)


@register_check
def _check_sections(params: Params) -> None:
    for key, section in params:
        if isinstance(section, TrainConfig):
            check_name(f"{key}.prior", section.prior, PRIORS)
