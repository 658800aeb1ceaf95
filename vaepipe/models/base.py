"""The interface every VAE model has, and the layers the models share.

A model maps images (B, C, H, W) in [0, 1] to a diagonal Gaussian posterior and decodes
latents back to what its ``likelihood`` (:mod:`vaepipe.models.likelihoods`) reads: per-pixel
logits (B, C, H, W), and for the discretized logistic per-pixel log-scales too (B, 2C, H, W).
Its ``prior`` (:mod:`vaepipe.models.priors`) is p(z). The models themselves and their
registry are in :mod:`vaepipe.models.vae`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vaepipe.models.likelihoods import Likelihood, make_likelihood
from vaepipe.models.priors import Prior, build_prior, log_normal


class VAE(nn.Module):
    """Base class: ``encode(x) -> (mu, logvar)``, ``decode(z) -> logits``, ``forward``.

    Subclasses set ``kind`` (the registry key, the params section and the models/ folder) and
    ``title`` (how figures and tables name it), call :meth:`_describe` with their constructor
    arguments (``image_shape``, ``latent_dim``, the ``likelihood`` that the decoder's output
    parameterises and the ``prior``), and implement ``encode`` / ``decode``; ``model_args``
    holds the constructor arguments, so a checkpoint can rebuild the model.
    """

    kind: str = ""
    title: str = ""
    image_shape: tuple[int, int, int]
    latent_dim: int
    likelihood: Likelihood
    prior: Prior
    model_args: dict

    kl_estimate: str = "closed_form"
    levels: int = 1  # stochastic levels; a two-level model's latent measures are its top one's

    def _describe(self, image_shape, latent_dim: int, likelihood: str | dict, prior: str | dict,
                  kl_estimate: str = "closed_form", **args) -> None:
        """Set the attributes every model has and ``model_args`` (lists, as JSON has them).
        ``kl_estimate``: ``closed_form`` uses the prior's closed-form KL where it has one,
        ``single_sample`` always the one-draw estimate log q(z | x) - log p(z)."""
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.likelihood = make_likelihood(likelihood)
        self.prior = build_prior(prior, latent_dim, tuple(image_shape))
        self.kl_estimate = kl_estimate
        self.model_args = {"image_shape": list(image_shape), "latent_dim": latent_dim,
                           **{k: list(v) if isinstance(v, tuple) else v for k, v in args.items()},
                           "likelihood": self.likelihood.spec(), "prior": self.prior.spec(),
                           "kl_estimate": kl_estimate}

    @property
    def out_channels(self) -> int:
        """Channels the decoder emits: what the likelihood reads for each image channel."""
        return self.likelihood.output_channels(self.image_shape[0])

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """KL(q(z | x) || p(z)) per image under the model's prior, (B,)."""
        if self.kl_estimate == "single_sample":
            return Prior.kl(self.prior, mu, logvar, z, self.encode)
        return self.prior.kl(mu, logvar, z, self.encode)

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` latents drawn from the prior with ``generator`` (on its device), without
        gradients (a learned prior runs the encoder to draw)."""
        with torch.no_grad():
            return self.prior.sample(n, generator, self.encode)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps with eps ~ N(0, I); differentiable in mu and logvar."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(decoder output, mu, logvar, z)`` with one posterior draw z per image. A model
        with more latent levels returns them concatenated; only :meth:`kl` reads them."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)
        return self.decode(z), mu, logvar, z

    def log_weights(self, x: torch.Tensor, k: int, generator: torch.Generator,
                    likelihood: Likelihood) -> torch.Tensor:
        """Importance log-weights log p(x | z_k) + log p(z_k) - log q(z_k | x) of ``k``
        posterior draws per image of ``x`` (B, C, H, W), (B, K); ``likelihood`` scores the
        decoder's output. The noise comes from ``generator`` (a CPU one: the same draws on
        every device)."""
        mu, logvar = self.encode(x)                      # (B, Z)
        b, zdim = mu.shape
        eps = torch.randn((b, k, zdim), generator=generator).to(mu.device)  # (B, K, Z)
        z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps
        out = self.decode(z.reshape(b * k, zdim))       # (B*K, k C, H, W)
        target = x.repeat_interleave(k, dim=0)
        log_px = -likelihood.recon_per_sample(out, target).view(b, k)
        log_pz = self.prior.log_prob(z, self.encode)                       # (B, K)
        log_qz = -0.5 * (eps.pow(2) + math.log(2 * math.pi) + logvar[:, None]).sum(-1)
        return log_px + log_pz - log_qz


def _activation(name: str, negative_slope: float) -> nn.Module:
    # In place: the layer before (Linear) keeps its input, not its output, for the backward
    # pass, so overwriting the output is safe and saves a tensor per layer.
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope, inplace=True)
    raise ValueError(f"activation must be relu or leaky_relu, got {name!r}")


class GatedDense(nn.Module):
    """h = (W x + b) * sigmoid(V x + c) (Dauphin et al. 2017), the VampPrior code's dense layer.
    W and V are one Linear of twice the width: one matrix product per layer."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, 2 * n_out)

    def forward(self, x):
        h, g = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(g)


def bounded_logvar(n_in: int, n_out: int) -> nn.Module:
    """The gated models' log-variance head: linear, then clamped to [-6, 2] (Hardtanh)."""
    return nn.Sequential(nn.Linear(n_in, n_out), nn.Hardtanh(-6.0, 2.0))


def he_init(module: nn.Module) -> None:
    """Every Linear weight ~ N(0, 2 / fan_in), biases as PyTorch draws them (the VampPrior
    code's initialisation of its gated models)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_features))


def dense_stack(widths: list[int], gated: bool, activation: str, negative_slope: float
                ) -> list[nn.Module]:
    """Layers from ``widths[0]`` through each later width: gated, or Linear + activation."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths, widths[1:]):
        layers += ([GatedDense(n_in, n_out)] if gated else
                   [nn.Linear(n_in, n_out), _activation(activation, negative_slope)])
    return layers


