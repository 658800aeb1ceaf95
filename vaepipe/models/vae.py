"""VAE models behind one small interface, and a registry that rebuilds them from checkpoints.

Every model maps images (B, C, H, W) in [0, 1] to a diagonal Gaussian posterior and decodes
latents back to what its ``likelihood`` (:mod:`vaepipe.models.likelihoods`) reads: per-pixel
logits (B, C, H, W), and for the discretized logistic per-pixel log-scales too (B, 2C, H, W).
Its ``prior`` (:mod:`vaepipe.models.priors`) is p(z). :data:`MODELS` is the one list of model
kinds: stages, checkpoints and figures read it.
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from vaepipe.models.likelihoods import Likelihood, make_likelihood, section_likelihood
from vaepipe.models.priors import Prior, build_prior


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

    def _describe(self, image_shape, latent_dim: int, likelihood: str | dict, prior: str,
                  kl_estimate: str = "closed_form", **args) -> None:
        """Set the attributes every model has and ``model_args`` (lists, as JSON has them).
        ``kl_estimate``: ``closed_form`` uses the prior's closed-form KL where it has one,
        ``single_sample`` always the one-draw estimate log q(z | x) - log p(z)."""
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.likelihood = make_likelihood(likelihood)
        self.prior = build_prior(prior, latent_dim)
        self.kl_estimate = kl_estimate
        self.model_args = {"image_shape": list(image_shape), "latent_dim": latent_dim,
                           **{k: list(v) if isinstance(v, tuple) else v for k, v in args.items()},
                           "likelihood": self.likelihood.spec(), "prior": prior,
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
        """``n`` latents drawn from the prior with ``generator`` (on its device)."""
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
        """``(decoder output, mu, logvar, z)`` with one posterior draw z per image."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)
        return self.decode(z), mu, logvar, z


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


class MLPVAE(VAE):
    """Fully connected VAE: D -> hidden... -> (mu, logvar) in R^z -> reversed hidden -> D.

    ``gated``: the VampPrior code's VAE, gated dense layers, a log-variance bounded to
    [-6, 2] and He-initialised weights (``activation`` is then unused).
    """

    kind = "mlp"
    title = "MLP VAE"

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int = 32,
                 hidden: tuple[int, ...] = (512, 256), activation: str = "leaky_relu",
                 negative_slope: float = 0.2, likelihood: str | dict = "bernoulli",
                 prior: str = "standard_normal", kl_estimate: str = "closed_form",
                 gated: bool = False):
        super().__init__()
        self._describe(image_shape, latent_dim, likelihood, prior, kl_estimate, hidden=hidden,
                       activation=activation, negative_slope=negative_slope, gated=gated)
        d = math.prod(image_shape)
        out_shape = (self.out_channels, *image_shape[1:])
        stack = [d, *hidden]
        self.encoder = nn.Sequential(nn.Flatten(),
                                     *dense_stack(stack, gated, activation, negative_slope))
        self.fc_mu = nn.Linear(hidden[-1], latent_dim)
        self.fc_logvar = (bounded_logvar(hidden[-1], latent_dim) if gated else
                          nn.Linear(hidden[-1], latent_dim))
        self.decoder = nn.Sequential(
            *dense_stack([latent_dim, *reversed(hidden)], gated, activation, negative_slope),
            nn.Linear(hidden[0], math.prod(out_shape)), nn.Unflatten(1, out_shape))
        if gated:
            he_init(self)

    def encode(self, x):
        h = self.encoder(x)  # (B, hidden[-1])
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z):
        return self.decoder(z)  # (B, k C, H, W)


def conv_output_sizes(size: int, n_layers: int) -> list[int]:
    """Spatial sizes after each 3x3, stride-2, padding-1 convolution: s -> ceil(s / 2)."""
    sizes = [size]
    for _ in range(n_layers):
        sizes.append((sizes[-1] - 1) // 2 + 1)
    return sizes


class ConvVAE(VAE):
    """Convolutional VAE: [3x3 stride-2 conv, BatchNorm, ReLU] per channel count, linear heads.

    The decoder mirrors the encoder with 3x3 stride-2 transposed convolutions whose
    ``output_padding`` is chosen per layer so every intermediate size matches the encoder's
    exactly; 1x28x28 (28 -> 14 -> 7) and 3x32x32 (32 -> 16 -> 8 -> 4) both round-trip.
    """

    kind = "conv"
    title = "Conv VAE"

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int = 16,
                 channels: tuple[int, ...] = (32, 64), likelihood: str | dict = "bernoulli",
                 prior: str = "standard_normal", kl_estimate: str = "closed_form"):
        super().__init__()
        self._describe(image_shape, latent_dim, likelihood, prior, kl_estimate,
                       channels=channels)
        c_in, height, width = image_shape
        hs = conv_output_sizes(height, len(channels))
        ws = conv_output_sizes(width, len(channels))
        self._bottleneck = (channels[-1], hs[-1], ws[-1])
        flat = math.prod(self._bottleneck)

        enc: list[nn.Module] = []
        prev = c_in
        for c in channels:
            enc += [nn.Conv2d(prev, c, 3, stride=2, padding=1), nn.BatchNorm2d(c),
                    nn.ReLU(inplace=True)]
            prev = c
        enc.append(nn.Flatten())
        self.encoder = nn.Sequential(*enc)
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_logvar = nn.Linear(flat, latent_dim)

        dec: list[nn.Module] = [nn.Linear(latent_dim, flat), nn.Unflatten(1, self._bottleneck)]
        # channel counts after each deconv; the last emits what the likelihood reads
        outs = list(reversed([self.out_channels, *channels[:-1]]))
        for i, c_out in enumerate(outs):
            level = len(channels) - i  # decoding from sizes[level] to sizes[level - 1]
            # A stride-2 3x3 transposed conv maps s -> 2s - 1 + output_padding.
            pad = (hs[level - 1] - (2 * hs[level] - 1), ws[level - 1] - (2 * ws[level] - 1))
            dec.append(nn.ConvTranspose2d(prev, c_out, 3, stride=2, padding=1,
                                          output_padding=pad))
            if i < len(outs) - 1:  # the last layer emits logits: no norm, no activation
                dec += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            prev = c_out
        self.decoder = nn.Sequential(*dec)
        # Channels-last weights make oneDNN run every convolution on NHWC activations with no
        # layout reorders between layers, a faster training step on the CPU
        # (bench/layouts.py). The values are the same; only the memory order of the
        # 4-D tensors differs, and checkpoints load into either layout.
        self.to(memory_format=torch.channels_last)

    def encode(self, x):
        h = self.encoder(x)  # (B, C_last * h * w)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z):
        return self.decoder(z)  # (B, k C, H, W)


MODELS: dict[str, type[VAE]] = {cls.kind: cls for cls in (MLPVAE, ConvVAE)}


def model_title(kind: str) -> str:
    """How figures and tables name model ``kind`` ("MLP VAE"); an unknown kind by its key."""
    return MODELS[kind].title if kind in MODELS else kind


def model_args(kind: str, section) -> dict:
    """Constructor arguments (besides ``image_shape``) of model ``kind`` from its params section:
    each argument of the class's ``__init__`` is read from the key of the same name, the
    likelihood with its own parameters (:func:`~vaepipe.models.likelihoods.section_likelihood`)."""
    names = [p for p in inspect.signature(_model_class(kind)).parameters if p != "image_shape"]
    args = {name: getattr(section, name) for name in names}
    return {**args, "likelihood": section_likelihood(section).spec()}


def _model_class(kind: str) -> type[VAE]:
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(MODELS)}")
    return MODELS[kind]


def build_model(kind: str, **model_args) -> VAE:
    """Instantiate a registered model kind from its constructor arguments."""
    return construct(_model_class(kind), model_args)


def construct(cls: type[nn.Module], model_args: dict) -> nn.Module:
    """``cls(**model_args)``, lists turned into tuples (a checkpoint stores tuples as lists)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in model_args.items()})
