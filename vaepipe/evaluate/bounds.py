"""The likelihood side of the evaluation: the ELBO, the importance-weighted bound and the 8-bit
rate of one model, each per image and as means with standard errors.

A model is scored with its own likelihood on the pixels it needs, and for the 8-bit rate with
the likelihood its own names (:meth:`vaepipe.models.likelihoods.Likelihood.rate_scoring`); a
scoring that is its own rate shares its pass.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from vaepipe.evaluate.measures import bits_per_dim, standard_error
from vaepipe.models.batches import in_batches, inference, to_unit_float
from vaepipe.models.likelihoods import Likelihood, bits_per_dim_8bit
from vaepipe.models.vae import VAE
from vaepipe.train.objective import elbo_per_image


def iwae_bound(model: VAE, images: torch.Tensor, k: int, batch: int,
               generator: torch.Generator, likelihood: Likelihood | None = None,
               pixels: str = "levels") -> tuple[np.ndarray, np.ndarray]:
    """Importance-weighted bound (Burda et al. 2015) on -log p(x) of each image, in nats.

    For each image, K latents z_k from q(z | x) give log-weights
    log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x) (:meth:`VAE.log_weights`: the
    model's prior and levels, and its likelihood unless ``likelihood`` scores the decoder's
    output instead), and
    -log p(x) <= -log (1/K sum_k w_k), computed with log-sum-exp. The decoder runs once per
    ``batch`` images on all their batch * K latents. Returns ``(IWAE bound, Monte-Carlo
    NELBO)`` per image, float64 (N,); the second is -mean_k log w_k, the ordinary ELBO
    estimate on the same noise (with K = 1 the two are equal). ``pixels``: levels, or
    dequantized (one draw per image, shared by its K latents: the bound on log p(y) of that y).
    """
    likelihood = likelihood or model.likelihood

    def bounds(images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # noise drawn on the CPU generator, then moved: the same on every device
        x = to_unit_float(images_u8.cpu(), pixels, generator).to(images_u8.device)  # (B, C, H, W)
        log_w = model.log_weights(x, k, generator, likelihood).double()       # (B, K)
        return math.log(k) - torch.logsumexp(log_w, dim=1), -log_w.mean(dim=1)

    with inference(model):
        iwae, elbo = in_batches(bounds, images, batch)
    return iwae.cpu().numpy(), elbo.cpu().numpy()


def importance_bound(nelbo: np.ndarray, iwae: np.ndarray, mc_nelbo: np.ndarray,
                      whole_set: bool) -> tuple[float, float, float, float]:
    """``(bound, its SE, gain, its SE)`` in nats per image from one ELBO pass over the test set
    (``nelbo``) and the IWAE pass over a subset (``iwae``, ``mc_nelbo`` on the same latents).

    The gain of the bound over the ELBO is measured on the subset, paired (same images, same
    latents); the test-set bound is the test-set NELBO minus that gain (a difference
    estimator: its error is the gain's, ~0.1 nats, not the subset's spread of -log p(x), which
    is tens of nats per image and put the raw subset mean 3.5 nats off). Its standard error
    treats the two means as independent (the default subset is 3 % of the test set). When the
    subset is the whole test set (the literature's protocol), the bound is the IWAE mean itself.
    """
    gain = mc_nelbo - iwae
    gain_se = standard_error(gain) if len(gain) > 1 else 0.0
    if whole_set:
        return float(iwae.mean()), standard_error(iwae), float(gain.mean()), gain_se
    bound = float(nelbo.mean() - gain.mean())
    return bound, math.hypot(standard_error(nelbo), gain_se), float(gain.mean()), gain_se


def once_per_scoring(scorings: dict, compute) -> dict:
    """``{name: compute(likelihood, pixels)}`` for ``scorings`` (name -> (likelihood, pixels)),
    computed once per distinct scoring: a likelihood that is its own rate shares its pass."""
    done: dict = {}
    for scoring in scorings.values():
        if scoring not in done:
            done[scoring] = compute(*scoring)
    return {name: done[scoring] for name, scoring in scorings.items()}

def scorings_of(likelihood: Likelihood, binarized: bool) -> dict[str, tuple[Likelihood, str]]:
    """``(likelihood, pixels)`` of each way a model is scored: its own likelihood on the pixels
    it needs, and the 8-bit rate's (none for a model of binarized pixels)."""
    scorings = {"own": (likelihood, likelihood.scored_pixels)}
    if not binarized:
        rate, dequantized = likelihood.rate_scoring()
        scorings["rate"] = (rate, "dequantized" if dequantized else "levels")
    return scorings


def _with_errors(series: list[tuple[str, np.ndarray]]) -> dict:
    """Each per-image series as its mean and its standard error (``<key>_se``)."""
    out: dict = {}
    for key, values in series:
        out[key], out[f"{key}_se"] = float(values.mean()), standard_error(values)
    return out


def elbo_metrics(model: VAE, scored: torch.Tensor, scorings: dict, floor: np.ndarray,
                 noise_seed: int) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """Reconstruction, KL, NELBO, recipe 000's bits/dim, the NELBO above the BCE floor (where
    the likelihood has one) and the 8-bit rate, each with its standard error; also the
    per-image NELBO and rate nats the IWAE step refines. One ELBO pass per distinct scoring,
    on the same seeded noise."""
    elbo = once_per_scoring(scorings, lambda lik, pix: tuple(t.cpu().numpy() for t in (
        elbo_per_image(model, scored, pix, noise_seed, lik))))
    dims = math.prod(model.image_shape)
    recon, kl = elbo["own"]
    nelbo = recon + kl
    series = [("recon", recon), ("kl", kl), ("nelbo", nelbo), ("bpd", bits_per_dim(nelbo, dims))]
    if model.likelihood.bce_floor:
        series.append(("nelbo_above_floor", nelbo - floor))
    rate_nats = None
    if "rate" in scorings:
        rate_nats = sum(elbo["rate"])
        dequantized = scorings["rate"][1] == "dequantized"
        series.append(("bpd_8bit", bits_per_dim_8bit(rate_nats, dims, dequantized)))
    return _with_errors(series), nelbo, rate_nats


def iwae_metrics(model: VAE, iwae_x: torch.Tensor, scorings: dict, k: int, batch: int,
                 noise_seed: int, whole_set: bool, nelbo: np.ndarray,
                 rate_nats: np.ndarray | None) -> tuple[dict, dict]:
    """The IWAE bound on -log p(x) with K = ``k`` and its gain over the ELBO (and the rate's),
    measured on the images ``iwae_x`` (a subset of the test set, or all of it: ``whole_set``)
    with the same latents for every scoring; also the details of that subset."""
    bounds = once_per_scoring(scorings, lambda lik, pix: iwae_bound(
        model, iwae_x, k, batch, torch.Generator().manual_seed(noise_seed), lik, pix))
    iwae, mc_nelbo = bounds["own"]
    m: dict = {}
    m["iwae_nll"], m["iwae_nll_se"], m["iwae_gain"], m["iwae_gain_se"] = importance_bound(
        nelbo, iwae, mc_nelbo, whole_set)
    details = {"images": len(iwae), "subset_iwae_nll": float(iwae.mean()),
               "subset_mc_nelbo": float(mc_nelbo.mean())}
    if rate_nats is not None:
        dims = math.prod(model.image_shape)
        dequantized = scorings["rate"][1] == "dequantized"
        rate_bound, rate_se, rate_gain, _ = importance_bound(rate_nats, *bounds["rate"],
                                                              whole_set)
        m["bpd_8bit_iwae"] = bits_per_dim_8bit(rate_bound, dims, dequantized)
        m["bpd_8bit_iwae_se"] = bits_per_dim(rate_se, dims)
        details["rate_gain_nats"] = rate_gain
    return m, details
