"""The decoders' pixel distributions: one class each, registered by name in :data:`LIKELIHOODS`.

A decoder emits ``out`` (B, k C, H, W): k = :attr:`Likelihood.outputs_per_channel` values per
image channel (1 logit, or 2 for the discretized logistic: the logits of the pixel means, then
the log-scales). Pixels are in [0, 1]. Each likelihood knows everything the pipeline asks of
it: how many channels its decoder emits, -log p(x | z) per image, its mean image (figures,
FID), which pixel preparations it can train on, how its model is scored for the 8-bit rate,
its own parameters (from the model's params section) and its label in tables.

Adding one is one subclass here: set ``name`` (the params value) and ``label``, implement
:meth:`~Likelihood.nll` and :meth:`~Likelihood.mean`; its parameters are dataclass fields read
from the params keys of the same name. Params name it (``mlp.likelihood``); a checkpoint stores
:meth:`~Likelihood.spec` in its ``model_args``, so a model rebuilds with it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from vaepipe.config import ConfigError, Params, TrainConfig, check_name, register_check
from vaepipe.models.batches import PIXELS

# PixelCNN++'s floor on the log-scale (on pixels in [-1, 1]; -7 - ln 2 on [0, 1])
LOG_SCALE_MIN = -7.0 - math.log(2.0)
LEVELS = 256
_HALF_BIN = 0.5 / (LEVELS - 1)  # pixel v sits at v / 255, its bin is v / 255 +- 1 / 510
# below this |logit|, log C and the mean of the continuous Bernoulli take their Taylor series
_CB_SERIES = 1e-2

LIKELIHOODS: dict[str, type["Likelihood"]] = {}


@dataclasses.dataclass(frozen=True)
class Likelihood:
    """p(x | z) of the pixels given a decoder's output; instances are its parameter values.

    Class attributes a subclass sets: ``name``, ``label`` (what its 8-bit rate is, in tables),
    ``outputs_per_channel``, ``trains_on`` (the pixel preparations it accepts, the first being
    what it needs when ``data.dequantize`` is off), ``bce_floor`` (whether the Bernoulli
    cross-entropy floor applies) and ``rate_as`` (the registered likelihood whose density
    scores it for the 8-bit rate; itself when empty).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    outputs_per_channel: ClassVar[int] = 1
    trains_on: ClassVar[tuple[str, ...]] = PIXELS
    bce_floor: ClassVar[bool] = False
    rate_as: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            LIKELIHOODS[cls.name] = cls

    # -- the math
    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) per pixel, in nats: decoder output ``out``, pixels ``x`` (B, C, H, W)."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The pixel means in [0, 1] that the figures and FID use."""
        raise NotImplementedError

    def recon_per_sample(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) summed over pixels, in nats: (B,)."""
        return self.nll(out, x).flatten(1).sum(dim=1)

    def output_channels(self, channels: int) -> int:
        """Channels a decoder emits for images of ``channels`` channels."""
        return self.outputs_per_channel * channels

    # -- what it trains and is scored on
    def training_pixels(self, dequantize: bool, binarize: str) -> str:
        """What a model of this likelihood trains on: ``binarized`` (data.binarize: dynamic),
        ``dequantized`` (data.dequantize, or a likelihood that only accepts dequantized pixels)
        or ``levels``."""
        if binarize == "dynamic":
            return "binarized"
        return "dequantized" if dequantize else self.trains_on[0]

    @property
    def scored_pixels(self) -> str:
        """The test pixels of its own NELBO: those it needs (the grey levels for most)."""
        return self.trains_on[0]

    def rate_scoring(self) -> tuple["Likelihood", bool]:
        """How a model of this likelihood is scored for the 8-bit rate: ``(likelihood,
        dequantize)``. Densities score uniformly dequantized pixels y = (v + u) / 256, whose
        -log p(y) + D ln 256 bounds -log P(v) (Theis et al. 2016); a likelihood of the 256
        levels themselves (one that cannot train on dequantized pixels) is its own rate."""
        scorer = LIKELIHOODS[self.rate_as]() if self.rate_as else self
        return scorer, "dequantized" in scorer.trains_on

    # -- how params and checkpoints name it
    def spec(self) -> str | dict:
        """What a checkpoint stores: the name, with the parameters where it has any."""
        values = dataclasses.asdict(self)
        return {"name": self.name, **values} if values else self.name

    @classmethod
    def parameters(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def make_likelihood(spec: str | dict | Likelihood) -> Likelihood:
    """A likelihood from its name, a checkpoint's spec ``{"name": ..., **parameters}`` or itself."""
    if isinstance(spec, Likelihood):
        return spec
    name, values = (spec, {}) if isinstance(spec, str) else (
        spec.get("name"), {k: v for k, v in spec.items() if k != "name"})
    if name not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {name!r}")
    return LIKELIHOODS[name](**values)


def section_likelihood(section: TrainConfig) -> Likelihood:
    """The likelihood a params section names, with its parameters read from the section's keys
    of the same names (``obs_std`` for the Gaussian)."""
    cls = LIKELIHOODS[section.likelihood]
    return cls(**{name: getattr(section, name) for name in cls.parameters()})


# --------------------------------------------------------------------------------------------
# The registered likelihoods


class Bernoulli(Likelihood):
    """Binary cross-entropy with logits, the recipes' choice. On grey levels it is not a
    likelihood of the data (it does not integrate to 1 over [0, 1]): its 8-bit rate is that
    of the continuous Bernoulli of the same logits, its normalised twin."""

    name = "bernoulli"
    label = "Bernoulli, scored as a continuous Bernoulli"
    bce_floor = True
    rate_as = "continuous_bernoulli"

    def nll(self, out, x):
        return F.binary_cross_entropy_with_logits(out, x, reduction="none")

    def mean(self, out):
        return torch.sigmoid(out)


@dataclasses.dataclass(frozen=True)
class Gaussian(Likelihood):
    """N(x; sigmoid(l), obs_std^2) per pixel, a density with a fixed standard deviation."""

    name = "gaussian"
    label = "Gaussian (with obs_std 1 at least 9.33 bits/dim by construction)"
    obs_std: float = 1.0

    def nll(self, out, x):
        return (0.5 * ((x - torch.sigmoid(out)) / self.obs_std).pow(2)
                + math.log(self.obs_std) + 0.5 * math.log(2 * math.pi))

    def mean(self, out):
        return torch.sigmoid(out)


class ContinuousBernoulli(Likelihood):
    """Loaiza-Ganem & Cunningham 2019: the Bernoulli cross-entropy plus its normaliser
    log C(lambda), lambda = sigmoid(l), a density on [0, 1]. It trains on dequantized pixels
    only: on exact levels 0 and 1 its density grows without bound."""

    name = "continuous_bernoulli"
    label = "continuous Bernoulli"
    trains_on = ("dequantized",)

    def nll(self, out, x):
        return F.binary_cross_entropy_with_logits(out, x, reduction="none") - cb_log_norm(out)

    def mean(self, out):
        return cb_mean(out)


class DiscretizedLogistic(Likelihood):
    """A logistic of mean sigmoid(l) and a learned, clamped log-scale per pixel, integrated
    over the pixel's bin of width 1/255, with open end bins (Salimans et al. 2017, PixelCNN++):
    a probability of each of the 256 levels, so it trains and is scored on the levels."""

    name = "discretized_logistic"
    label = "discretized logistic"
    outputs_per_channel = 2
    trains_on = ("levels",)

    def nll(self, out, x):
        return -discretized_logistic_log_prob(x, *split_discretized(out))

    def mean(self, out):
        # the logistic's mean, before its end bins gather the tails
        return split_discretized(out)[0]


# --------------------------------------------------------------------------------------------
# Their math, each term oracle-tested


def cb_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli, lambda = sigmoid(l), from the logit.

    C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) = l / tanh(l / 2), and C(1/2) = 2;
    near l = 0 the Taylor series log 2 + l^2 / 12 - 7 l^4 / 1440 (the closed form divides 0 by 0).
    """
    small = logits.abs() < _CB_SERIES
    safe = torch.where(small, torch.ones_like(logits), logits).abs()
    exact = torch.log(safe) - torch.log(torch.tanh(0.5 * safe))
    l2 = logits.pow(2)
    series = math.log(2.0) + l2 / 12.0 - 7.0 * l2.pow(2) / 1440.0
    return torch.where(small, series, exact)


def cb_mean(logits: torch.Tensor) -> torch.Tensor:
    """The mean of the continuous Bernoulli (it is not lambda): sigmoid(l) / tanh(l / 2) - 1 / l,
    1/2 + l / 12 - l^3 / 720 near l = 0; computed in float64, returned in the input's dtype."""
    l64 = logits.double()
    small = l64.abs() < _CB_SERIES
    safe = torch.where(small, torch.ones_like(l64), l64)
    exact = torch.sigmoid(safe) / torch.tanh(0.5 * safe) - 1.0 / safe
    series = 0.5 + l64 / 12.0 - l64.pow(3) / 720.0
    return torch.where(small, series, exact).to(logits.dtype)


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor,
                                  log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per pixel of 8-bit levels x = v / 255 under a logistic(mean, exp(log_scale))
    integrated over [x - 1/510, x + 1/510]; level 0 takes all mass below, level 255 all above.

    With a = (x + 1/510 - mean) / s and b = (x - 1/510 - mean) / s, sigmoid(a) - sigmoid(b) =
    sigmoid(a) sigmoid(-b) (1 - exp(b - a)): every term stays finite in float32, so no
    approximate branch is needed where the bin's mass is tiny.
    """
    inv_s = torch.exp(-log_scale)
    a = (x + _HALF_BIN - mean) * inv_s
    b = (x - _HALF_BIN - mean) * inv_s
    log_cdf_a = F.logsigmoid(a)        # log P(X < upper edge)
    log_sf_b = F.logsigmoid(-b)        # log P(X > lower edge)
    inner = log_cdf_a + log_sf_b + torch.log(-torch.expm1(b - a))
    return torch.where(x < _HALF_BIN, log_cdf_a, torch.where(x > 1 - _HALF_BIN, log_sf_b, inner))


def split_discretized(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A discretized-logistic decoder's output -> (pixel means in (0, 1), clamped log-scales)."""
    logits, raw = out.chunk(2, dim=1)
    return torch.sigmoid(logits), raw.clamp(min=LOG_SCALE_MIN)


def bits_per_dim_8bit(nats_per_image, pixels: int, dequantized: bool):
    """-log P(v) in bits per dimension from nats per image: a dequantized density's -log p(y)
    gains D ln 256 nats (the bin width 1/256 of every pixel)."""
    return (nats_per_image + (pixels * math.log(LEVELS) if dequantized else 0.0)) / (
        pixels * math.log(2.0))


# --------------------------------------------------------------------------------------------
# The params check: registered names, and pixel preparations each likelihood accepts


def check_pixels(likelihood: Likelihood, key: str, dequantize: bool, binarize: str) -> None:
    """A likelihood that fixes what a model trains on excludes the data keys that change it;
    one line naming both keys."""
    if binarize == "dynamic" and dequantize:
        raise ConfigError("data.binarize: dynamic cannot go with data.dequantize: true: "
                          "binarized pixels are 0 or 1; set one of them back")
    wanted = "binarized" if binarize == "dynamic" else "dequantized" if dequantize else None
    if wanted is None or wanted in likelihood.trains_on:
        return
    data_key = "data.binarize: dynamic" if wanted == "binarized" else "data.dequantize: true"
    takers = [n for n, cls in LIKELIHOODS.items() if wanted in cls.trains_on]
    raise ConfigError(f"{data_key} cannot go with {key}: {likelihood.name}, which trains on "
                      f"{' or '.join(likelihood.trains_on)} pixels ({wanted} pixels go with "
                      f"{', '.join(takers)}); set {data_key.split(':')[0]} back, or another "
                      f"likelihood")


@register_check
def _check_sections(params: Params) -> None:
    for key, section in params:
        if isinstance(section, TrainConfig):
            check_name(f"{key}.likelihood", section.likelihood, LIKELIHOODS)
            check_pixels(section_likelihood(section), f"{key}.likelihood",
                         params.data.dequantize, params.data.binarize)
