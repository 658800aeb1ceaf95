"""VAEs with two stochastic levels: the HVAE and ConvHVAE of Tomczak & Welling (2018).

The factorisation is theirs: q(z2 | x) q(z1 | x, z2) infers, p(z2) p(z1 | z2) p(x | z1, z2)
generates, with z1 and z2 of ``latent_dim`` each and p(z2) the model's ``prior``. The pipeline
reads these models through the one-level interface of :class:`~vaepipe.models.base.VAE`, on
the top level: ``encode`` is q(z2 | x) (every latent figure and latent measure shows z2),
``decode(z2)`` decodes through the mean of p(z1 | z2), and prior samples are z2 ~ p(z2)
decoded so. Training and the likelihood bounds use both levels: ``forward`` returns both
levels' posteriors concatenated ([z2, z1]), which :meth:`TwoLevelVAE.kl` splits, and
:meth:`TwoLevelVAE.log_weights` draws both.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vaepipe.models.base import VAE, bounded_logvar, dense_stack, he_init
from vaepipe.models.priors import log_normal


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) of diagonal Gaussians, summed over the last dim."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2))
                  / logvar_p.exp() - 1.0).sum(-1)


class Heads(nn.Module):
    """A Gaussian's (mu, logvar) from features: two linear heads, the log-variance bounded to
    [-6, 2] in the gated models (as the authors')."""

    def __init__(self, n_in: int, n_out: int, gated: bool):
        super().__init__()
        self.mu = nn.Linear(n_in, n_out)
        self.logvar = bounded_logvar(n_in, n_out) if gated else nn.Linear(n_in, n_out)

    def forward(self, h):
        return self.mu(h), self.logvar(h)


class TwoLevelVAE(VAE):
    """What both two-level models share; a subclass builds ``q_z2`` (x -> features),
    ``q_z1_x`` (x -> features), ``q_z1`` ([x features, z2 features] -> features), ``z2_in``
    (z2 -> features), the heads, ``p_z1`` (z2 -> features) and ``p_x`` (z1, z2 -> output)."""

    levels = 2

    def encode(self, x):
        return self.q_z2_heads(self.q_z2(x))

    def encode_z1(self, hx: torch.Tensor, z2: torch.Tensor):
        """q(z1 | x, z2) from the image's features ``hx`` (``q_z1_x(x)``) and z2."""
        return self.q_z1_heads(self.q_z1(torch.cat([hx, self.z2_in(z2)], dim=-1)))

    def prior_z1(self, z2: torch.Tensor):
        """p(z1 | z2): (mu, logvar)."""
        return self.p_z1_heads(self.p_z1(z2))

    def decode(self, z):
        return self.decode_levels(self.prior_z1(z)[0], z)

    def decode_levels(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x, generator=None):
        mu2, logvar2 = self.encode(x)
        z2 = self.reparameterize(mu2, logvar2, generator)
        mu1, logvar1 = self.encode_z1(self.q_z1_x(x), z2)
        z1 = self.reparameterize(mu1, logvar1, generator)
        return (self.decode_levels(z1, z2), torch.cat([mu2, mu1], 1),
                torch.cat([logvar2, logvar1], 1), torch.cat([z2, z1], 1))

    def kl(self, mu, logvar, z):
        """KL(q(z1, z2 | x) || p(z1, z2)) per image from ``forward``'s concatenated levels:
        the top level's against the prior (:meth:`VAE.kl`), plus z1's against p(z1 | z2)
        at the drawn z2 (closed form, or the one-sample estimate with ``kl_estimate:
        single_sample``, the authors' choice)."""
        d = self.latent_dim
        top = super().kl(mu[:, :d], logvar[:, :d], z[:, :d])
        mu_p, logvar_p = self.prior_z1(z[:, :d])
        mu1, logvar1, z1 = mu[:, d:], logvar[:, d:], z[:, d:]
        if self.kl_estimate == "single_sample":
            return top + log_normal(z1, mu1, logvar1) - log_normal(z1, mu_p, logvar_p)
        return top + gaussian_kl(mu1, logvar1, mu_p, logvar_p)

    def log_weights(self, x, k, generator, likelihood):
        mu2, logvar2 = self.encode(x)                                    # (B, Z)
        b, d = mu2.shape
        eps2 = torch.randn((b, k, d), generator=generator).to(mu2.device)
        z2 = (mu2[:, None] + torch.exp(0.5 * logvar2)[:, None] * eps2).reshape(b * k, d)
        hx = self.q_z1_x(x).repeat_interleave(k, dim=0)                  # (B*K, H)
        mu1, logvar1 = self.encode_z1(hx, z2)
        eps1 = torch.randn((b * k, d), generator=generator).to(mu2.device)
        z1 = mu1 + torch.exp(0.5 * logvar1) * eps1
        out = self.decode_levels(z1, z2)
        log_px = -likelihood.recon_per_sample(out, x.repeat_interleave(k, dim=0))
        log_p = self.prior.log_prob(z2, self.encode) + log_normal(z1, *self.prior_z1(z2))
        log_q = (log_normal(z2, mu2.repeat_interleave(k, 0), logvar2.repeat_interleave(k, 0))
                 + log_normal(z1, mu1, logvar1))
        return (log_px + log_p - log_q).view(b, k)


class MLPHVAE(TwoLevelVAE):
    """The HVAE: every network fully connected (gated dense layers with ``gated``)."""

    kind = "mlp"
    title = "MLP HVAE"

    def __init__(self, image_shape, latent_dim=40, hidden=(300, 300), activation="leaky_relu",
                 negative_slope=0.2, likelihood="bernoulli", prior="standard_normal",
                 kl_estimate="closed_form", gated=False, levels=2):
        super().__init__()
        self._describe(image_shape, latent_dim, likelihood, prior, kl_estimate, hidden=hidden,
                       activation=activation, negative_slope=negative_slope, gated=gated,
                       levels=levels)
        d, h_first, h_last = math.prod(image_shape), hidden[0], hidden[-1]
        out_shape = (self.out_channels, *image_shape[1:])

        def layer(n_in, n_out):
            return nn.Sequential(*dense_stack([n_in, n_out], gated, activation, negative_slope))

        self.q_z2 = nn.Sequential(nn.Flatten(), *dense_stack([d, *hidden], gated, activation,
                                                             negative_slope))
        self.q_z2_heads = Heads(h_last, latent_dim, gated)
        self.q_z1_x = nn.Sequential(nn.Flatten(), layer(d, h_first))
        self.z2_in = layer(latent_dim, h_first)
        self.q_z1 = layer(2 * h_first, h_last)
        self.q_z1_heads = Heads(h_last, latent_dim, gated)
        self.p_z1 = nn.Sequential(*dense_stack([latent_dim, *hidden], gated, activation,
                                               negative_slope))
        self.p_z1_heads = Heads(h_last, latent_dim, gated)
        self.p_x_z1 = layer(latent_dim, h_last)
        self.p_x_z2 = layer(latent_dim, h_last)
        self.p_x = nn.Sequential(layer(2 * h_last, h_first),
                                 nn.Linear(h_first, math.prod(out_shape)),
                                 nn.Unflatten(1, out_shape))
        if gated:
            he_init(self)

    def decode_levels(self, z1, z2):
        return self.p_x(torch.cat([self.p_x_z1(z1), self.p_x_z2(z2)], dim=-1))


# the ConvHVAE's fully connected width (the authors': 300)
CONV_HVAE_HIDDEN = 300


class GatedConv2d(nn.Module):
    """h = conv(x) * sigmoid(conv'(x)), both convolutions one of twice the channels."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 2 * c_out, kernel, stride, padding)

    def forward(self, x):
        h, g = self.conv(x).chunk(2, dim=1)
        return h * torch.sigmoid(g)


def conv_layer(c_in, c_out, kernel, stride, padding, gated):
    return (GatedConv2d(c_in, c_out, kernel, stride, padding) if gated else
            nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding), nn.ReLU()))


class ConvHVAE(TwoLevelVAE):
    """The ConvHVAE: convolutional q(z2 | x), q(z1 | x, z2) and p(x | z1, z2), fully
    connected p(z1 | z2), as the authors' (``channels`` (32, 64) are their widths): two
    stride-2 convolutions bring the image to 6 maps of a quarter of its side; the decoder
    maps [z1, z2] to one image-sized map per channel and refines it with four 3x3
    convolutions of ``channels[-1]`` maps and a 1x1 one to the likelihood's outputs."""

    kind = "conv"
    title = "ConvHVAE"

    def __init__(self, image_shape, latent_dim=40, channels=(32, 64), likelihood="bernoulli",
                 prior="standard_normal", kl_estimate="closed_form", gated=False, levels=2):
        super().__init__()
        self._describe(image_shape, latent_dim, likelihood, prior, kl_estimate,
                       channels=channels, gated=gated, levels=levels)
        c, height, width = image_shape
        a, b, hidden = channels[0], channels[-1], CONV_HVAE_HIDDEN
        flat = 6 * ((height + 3) // 4) * ((width + 3) // 4)

        def convs(first_kernel, mid_kernel):
            return nn.Sequential(
                conv_layer(c, a, first_kernel, 1, first_kernel // 2, gated),
                conv_layer(a, a, 3, 2, 1, gated),
                conv_layer(a, b, mid_kernel, 1, mid_kernel // 2, gated),
                conv_layer(b, b, 3, 2, 1, gated),
                conv_layer(b, 6, 3, 1, 1, gated), nn.Flatten())

        def dense(n_in, n_out):
            return nn.Sequential(*dense_stack([n_in, n_out], gated, "relu", 0.0))

        self.q_z2 = convs(7, 5)
        self.q_z2_heads = Heads(flat, latent_dim, gated)
        self.q_z1_x = convs(3, 3)
        self.z2_in = dense(latent_dim, flat)
        self.q_z1 = dense(2 * flat, hidden)
        self.q_z1_heads = Heads(hidden, latent_dim, gated)
        self.p_z1 = nn.Sequential(dense(latent_dim, hidden), dense(hidden, hidden))
        self.p_z1_heads = Heads(hidden, latent_dim, gated)
        self.p_x_z1 = dense(latent_dim, hidden)
        self.p_x_z2 = dense(latent_dim, hidden)
        self.p_x_joint = dense(2 * hidden, math.prod(image_shape))
        self.p_x = nn.Sequential(
            nn.Unflatten(1, tuple(image_shape)),
            conv_layer(c, b, 3, 1, 1, gated),
            *(conv_layer(b, b, 3, 1, 1, gated) for _ in range(3)),
            nn.Conv2d(b, self.out_channels, 1))
        if gated:
            he_init(self)

    def decode_levels(self, z1, z2):
        h = self.p_x_joint(torch.cat([self.p_x_z1(z1), self.p_x_z2(z2)], dim=-1))
        return self.p_x(h)
