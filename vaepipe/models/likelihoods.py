"""The decoders' pixel distributions: pure math on decoder outputs, each term oracle-tested.

A decoder emits ``out`` (B, k C, H, W): k = 1 logit per pixel, or k = 2 for the discretized
logistic (the logits of the pixel means, then the log-scales). Pixels are in [0, 1].

- ``bernoulli``: binary cross-entropy with logits, the seeds' choice. On grey levels it is not
  a likelihood of the data (it does not integrate to 1 over [0, 1]).
- ``gaussian``: N(x; sigmoid(l), obs_std^2) per pixel, a density.
- ``continuous_bernoulli``: Loaiza-Ganem & Cunningham 2019, the Bernoulli cross-entropy plus
  its normaliser log C(lambda), lambda = sigmoid(l): a density on [0, 1].
- ``discretized_logistic``: a logistic of mean sigmoid(l) and a learned, clamped log-scale per
  pixel, integrated over the pixel's bin of width 1/255, with open end bins (Salimans et al.
  2017, PixelCNN++): a probability of each of the 256 levels.

:func:`rate_scoring` says how each is turned into a rate of 8-bit data (bits per dimension).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LIKELIHOODS = ("bernoulli", "gaussian", "continuous_bernoulli", "discretized_logistic")
# PixelCNN++'s floor on the log-scale (on pixels in [-1, 1]; -7 - ln 2 on [0, 1])
LOG_SCALE_MIN = -7.0 - math.log(2.0)
LEVELS = 256
_HALF_BIN = 0.5 / (LEVELS - 1)  # pixel v sits at v / 255, its bin is v / 255 +- 1 / 510
# below this |logit|, log C and the mean of the continuous Bernoulli take their Taylor series
_CB_SERIES = 1e-2


def output_channels(likelihood: str, channels: int) -> int:
    """Channels a decoder emits for images of ``channels`` channels."""
    _check(likelihood)
    return 2 * channels if likelihood == "discretized_logistic" else channels


def _check(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")


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


def recon_per_sample(out: torch.Tensor, x: torch.Tensor, likelihood: str = "bernoulli",
                     obs_std: float = 1.0) -> torch.Tensor:
    """-log p(x | z) summed over pixels, in nats: decoder output ``out``, pixels ``x`` (B, C, H,
    W) -> (B,)."""
    if likelihood == "bernoulli":
        per_pixel = F.binary_cross_entropy_with_logits(out, x, reduction="none")
    elif likelihood == "continuous_bernoulli":
        per_pixel = (F.binary_cross_entropy_with_logits(out, x, reduction="none")
                     - cb_log_norm(out))
    elif likelihood == "gaussian":
        per_pixel = (0.5 * ((x - torch.sigmoid(out)) / obs_std).pow(2)
                     + math.log(obs_std) + 0.5 * math.log(2 * math.pi))
    elif likelihood == "discretized_logistic":
        per_pixel = -discretized_logistic_log_prob(x, *split_discretized(out))
    else:
        _check(likelihood)
    return per_pixel.flatten(1).sum(dim=1)


def mean_image(out: torch.Tensor, likelihood: str = "bernoulli") -> torch.Tensor:
    """The pixel means in [0, 1] the figures and FID use: sigmoid(l) for the Bernoulli and the
    Gaussian, the continuous Bernoulli's own mean, the logistic's mean for the discretized one
    (before its end bins gather the tails)."""
    _check(likelihood)
    if likelihood == "continuous_bernoulli":
        return cb_mean(out)
    if likelihood == "discretized_logistic":
        return split_discretized(out)[0]
    return torch.sigmoid(out)


def rate_scoring(likelihood: str) -> tuple[str, bool]:
    """How a model of this likelihood is scored for the 8-bit rate: ``(likelihood, dequantize)``.

    Densities score uniformly dequantized pixels y = (v + u) / 256, whose -log p(y) + D ln 256
    bounds -log P(v) (Theis et al. 2016); a Bernoulli-logit decoder is scored with the
    continuous Bernoulli of the same lambda (its normalised twin); the discretized logistic
    gives P(v) itself.
    """
    _check(likelihood)
    if likelihood == "discretized_logistic":
        return likelihood, False
    return ("continuous_bernoulli" if likelihood == "bernoulli" else likelihood), True


def bits_per_dim_8bit(nats_per_image, pixels: int, dequantized: bool):
    """-log P(v) in bits per dimension from nats per image: a dequantized density's -log p(y)
    gains D ln 256 nats (the bin width 1/256 of every pixel)."""
    return (nats_per_image + (pixels * math.log(LEVELS) if dequantized else 0.0)) / (
        pixels * math.log(2.0))


def training_pixels(likelihood: str, dequantize: bool, binarize: str) -> str:
    """What a model of ``likelihood`` trains on (:func:`vaepipe.models.batches.to_unit_float`):
    ``binarized`` (data.binarize: dynamic), ``dequantized`` (data.dequantize, and always for the
    continuous Bernoulli, a density that grows without bound on exact levels) or ``levels``."""
    _check(likelihood)
    if binarize == "dynamic":
        return "binarized"
    return "dequantized" if dequantize or likelihood == "continuous_bernoulli" else "levels"
