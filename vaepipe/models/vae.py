"""The VAE models and the registry that rebuilds them from params sections and checkpoints.

Every model has the interface of :class:`vaepipe.models.base.VAE`. :data:`MODELS` is the one
list of model kinds (one-level classes; ``levels: 2`` in a section picks the two-level class
of :data:`TWO_LEVEL`): stages, checkpoints and figures read it.
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from vaepipe.config import ConfigError, Params, register_check
from vaepipe.models.base import VAE, bounded_logvar, dense_stack, he_init
from vaepipe.models.hierarchical import ConvHVAE, MLPHVAE
from vaepipe.models.likelihoods import section_likelihood
from vaepipe.models.priors import prior_spec


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
                 prior: str | dict = "standard_normal", kl_estimate: str = "closed_form",
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
                 prior: str | dict = "standard_normal", kl_estimate: str = "closed_form"):
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
# the same kinds with two stochastic levels (a section's ``levels: 2``)
TWO_LEVEL: dict[str, type[VAE]] = {cls.kind: cls for cls in (MLPHVAE, ConvHVAE)}


@register_check
def _check_models(params: Params) -> None:
    for kind in params.evaluate.nll_samples:
        if kind not in MODELS:
            raise ConfigError(f"evaluate.nll_samples has a key {kind!r}; the models are "
                              f"{', '.join(MODELS)}")
    if params.conv.gated and params.conv.levels == 1:
        raise ConfigError("conv.gated: true is the ConvHVAE's gated convolutions: it needs "
                          "conv.levels: 2 (or set conv.gated: false)")


def model_title(kind: str) -> str:
    """How figures and tables name model ``kind`` ("MLP VAE"); an unknown kind by its key."""
    return MODELS[kind].title if kind in MODELS else kind


def model_args(kind: str, section) -> dict:
    """Constructor arguments (besides ``image_shape``) of model ``kind`` from its params section:
    each argument of the class's ``__init__`` is read from the key of the same name, the
    likelihood and the prior with their own parameters
    (:func:`~vaepipe.models.likelihoods.section_likelihood`,
    :func:`~vaepipe.models.priors.prior_spec`)."""
    cls = model_class(kind, section.levels)
    names = [p for p in inspect.signature(cls).parameters if p != "image_shape"]
    args = {name: getattr(section, name) for name in names}
    return {**args, "likelihood": section_likelihood(section).spec(),
            "prior": prior_spec(section)}


def model_class(kind: str, levels: int = 1) -> type[VAE]:
    """The class of model ``kind`` with ``levels`` stochastic levels."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(MODELS)}")
    if levels not in (1, 2):
        raise ValueError(f"levels must be 1 or 2, got {levels!r}")
    return MODELS[kind] if levels == 1 else TWO_LEVEL[kind]


def build_model(kind: str, **model_args) -> VAE:
    """Instantiate a registered model kind from its constructor arguments (``levels`` among
    them picks the two-level class)."""
    return construct(model_class(kind, model_args.get("levels", 1)), model_args)


def construct(cls: type[nn.Module], model_args: dict) -> nn.Module:
    """``cls(**model_args)``, lists turned into tuples (a checkpoint stores tuples as lists)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in model_args.items()})
