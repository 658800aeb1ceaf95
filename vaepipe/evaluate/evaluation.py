"""The evaluate stage's library: every number of one VAE checkpoint on the test set.

The ELBO terms, the IWAE bound and the 8-bit rate come from :mod:`vaepipe.evaluate.bounds`
(through :func:`vaepipe.train.objective.elbo_per_image`, the code path training validates
with); the rest is built here from the model's ``encode`` / ``decode`` and the
measures of :mod:`vaepipe.evaluate.measures`, in the feature space of
:mod:`vaepipe.evaluate.classifier`.
All noise comes from generators seeded per purpose, so every checkpoint of a run sees the
same prior draws and the same subsets (differences between checkpoints are the models'),
and a rerun on the CPU gives the same numbers bit for bit.

``bpd_8bit`` is a rate of the 8-bit test images every model is scored on (a density of
dequantized pixels, or the discretized logistic's probabilities; see
:meth:`vaepipe.models.likelihoods.Likelihood.rate_scoring`), so it stands beside codecs and
published density models; ``bpd`` is recipe 000's NELBO / (D ln 2), a rate only where the
likelihood is one. Everything a checkpoint is scored with (its likelihood, its prior, what it
trained on) comes from the model and its checkpoint, never from params.
A model trained with ``data.binarize: dynamic`` is scored on one fixed binarization of the test
set: its NELBO and IWAE bound are in nats of binary images, and it has no 8-bit rate.

Every number that is a mean over test images has a ``<metric>_se`` beside it, its standard
error over those images; FID, precision and recall get theirs from repeated fresh prior draws.
They say how precisely the test set measures this one model, not how much another training
run (another seed) would move it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from vaepipe.config import EvaluateConfig
from vaepipe.evaluate.classifier import Classifier, classifier_features
from vaepipe.evaluate.bounds import elbo_metrics, iwae_bound, iwae_metrics, scorings_of
from vaepipe.evaluate.measures import (active_units, bce_floor, binary_entropy_per_image,
                                       diversity, frechet_distance, gaussian_stats, kl_per_dim,
                                       knn_radii, precision_recall, probe_accuracy,
                                       share_standard_error, silhouette, standard_error,
                                       subsample, unit_activity)
from vaepipe.models.batches import binarize_eval_splits, decode_mean, encode
from vaepipe.models.vae import VAE

FROZEN_SIGMAS = (0.1, 0.5, 1.0)
N_SAVED_SAMPLES = 100  # prior samples kept for the figures
N_SAVED_RECON = 16     # test images (and reconstructions) kept for the figures
N_SAVED_FROZEN = 64    # images per frozen-latent condition kept for the figures
# Offsets added to the run's seed, one generator per purpose: drawing more of one kind of
# noise (a larger K, more samples, a larger subset) never changes another kind.
(NOISE_ELBO, NOISE_IWAE, NOISE_PRIOR, NOISE_FROZEN, SUBSET_PROBE, SUBSET_IWAE, SUBSET_TEST,
 SUBSET_VAL, NOISE_PRIOR_REDRAWS, NOISE_TEST_NLL) = range(10)


def frozen_key(sigma: float) -> str:
    """Metric-name suffix of a frozen-latent sigma without a dot: 0.1 -> 'sigma_0_1'."""
    return "sigma_" + f"{sigma:g}".replace(".", "_") + ("_0" if float(sigma).is_integer() else "")


# The per-checkpoint metrics, in the order reports/evaluate.json lists them.
METRICS = ("bpd_8bit", "bpd_8bit_se", "bpd_8bit_iwae", "bpd_8bit_iwae_se", "recon", "recon_se",
           "kl", "kl_se", "nelbo", "nelbo_se", "bpd", "bpd_se",
           "nelbo_above_floor", "nelbo_above_floor_se", "iwae_nll", "iwae_nll_se", "iwae_gain",
           "iwae_gain_se", "test_nll", "test_nll_se", "active_units", "fid", "fid_se", "precision", "precision_se",
           "recall", "recall_se", "fid_recon", "probe_accuracy", "probe_accuracy_se",
           "silhouette", "frozen_diversity_prior",
           *(f"frozen_diversity_{frozen_key(s)}" for s in FROZEN_SIGMAS),
           *(f"frozen_fid_{frozen_key(s)}" for s in FROZEN_SIGMAS))


def _generator(seed: int, offset: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + offset)



def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two models hold identical parameters and buffers (``best`` is often ``final``)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def recon_indices(labels: np.ndarray, n: int = N_SAVED_RECON) -> np.ndarray:
    """Test indices for the reconstruction figure: the first image of each class (in class
    order), then the second of each class, and so on, until ``n``."""
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    picked = []
    for rank in range(max(len(ix) for ix in by_class)):
        picked += [int(ix[rank]) for ix in by_class if rank < len(ix)]
        if len(picked) >= n:
            break
    return np.asarray(picked[:n], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# What every checkpoint is compared against


@dataclass
class Reference:
    """Test-set data, subsets and real-image features, computed once per run."""

    test_x: torch.Tensor        # uint8 (N, C, H, W)
    test_y: np.ndarray          # int64 (N,)
    probe_x: torch.Tensor       # uint8, a seeded subset of the training split
    probe_y: np.ndarray
    iwae_index: torch.Tensor    # int64, a seeded subset of the test set (the IWAE gain's)
    test_floor: np.ndarray      # float64 (N,): each test image's BCE floor
    # the classifier's features; all None when the data has one class (no classifier)
    test_features: np.ndarray | None  # (N, F)
    test_stats: tuple[np.ndarray, np.ndarray] | None
    subset: torch.Tensor        # int64 indices of a seeded test subset of evaluate.samples
    pr_real: np.ndarray | None  # features of those test images
    pr_radii: torch.Tensor | None  # their k-NN radii (precision/recall), computed once
    numbers: dict = field(default_factory=dict)  # the report's `reference` block
    val_x: np.ndarray | None = None   # uint8, the validation split (its binarization comes first)
    binarize_seed: int | None = None  # data.binarize_seed

    @cached_property
    def test_binary(self) -> torch.Tensor:
        """The one fixed binarization of the test set (uint8 0 / 255), for models of binarized
        pixels; drawn when first asked for (:func:`binarize_eval_splits`)."""
        test = self.test_x.cpu().numpy()
        val = self.val_x if self.val_x is not None else test[:0]
        return torch.as_tensor(binarize_eval_splits(val, test, self.binarize_seed)[1]
                               ).to(self.test_x.device)


def _subset(n: int, size: int, seed: int, offset: int) -> np.ndarray:
    """Sorted indices of a seeded subset of ``size`` out of ``n`` (all of them if fewer)."""
    return subsample(n, size, seed * 1000 + offset)


def build_reference(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                    test: tuple[np.ndarray, np.ndarray], classifier: Classifier | None,
                    cfg: EvaluateConfig, seed: int, device: torch.device,
                    binarize_seed: int | None = None) -> Reference:
    """Subsets, real-image features and the real-vs-real floor of every measure.

    ``fid_real`` (and ``precision_real`` / ``recall_real``) compare validation images (held
    out of the official training set; neither the VAEs nor the classifier trained on them)
    with the test set, using as many images as a generated set has, so the floor carries the
    same small-sample bias as the models' numbers. With no ``classifier`` (data of one class)
    there are no features and none of these three. ``binarize_seed``: how the test set is
    binarized for models of binarized pixels (:func:`binarize_eval_splits`).
    """
    test_x = torch.as_tensor(test[0]).to(device)
    probe = _subset(len(train[0]), cfg.probe_images, seed, SUBSET_PROBE)
    iwae = _subset(len(test[0]), cfg.iwae_images, seed, SUBSET_IWAE)
    pr = _subset(len(test[0]), cfg.samples, seed, SUBSET_TEST)
    real = _subset(len(val[0]), cfg.samples, seed, SUBSET_VAL)
    numbers = {"bce_floor_test": bce_floor(test[0]), "bce_floor_val": bce_floor(val[0])}
    test_features = test_stats = pr_real = pr_radii = None
    if classifier is not None:
        test_features = classifier_features(classifier, test_x, cfg.batch_size)
        test_stats = gaussian_stats(test_features)
        val_features = classifier_features(
            classifier, torch.as_tensor(val[0][real]).to(device), cfg.batch_size)
        pr_real = test_features[pr]
        precision, recall = precision_recall(pr_real, val_features, cfg.pr_neighbours)
        pr_radii = knn_radii(torch.as_tensor(pr_real, dtype=torch.float32), cfg.pr_neighbours)
        numbers.update(fid_real=frechet_distance(*gaussian_stats(val_features), *test_stats),
                       precision_real=precision, recall_real=recall)
    numbers.update(iwae_samples=cfg.iwae_samples, iwae_images=len(iwae), samples=cfg.samples,
                   real_images=len(real), test_images=len(test_x))
    return Reference(test_x, test[1], torch.as_tensor(train[0][probe]).to(device),
                     train[1][probe], torch.as_tensor(iwae).to(device),
                     binary_entropy_per_image(test[0]), test_features, test_stats,
                     torch.as_tensor(pr), pr_real, pr_radii, numbers, val[0], binarize_seed)


# --------------------------------------------------------------------------------------------
# One checkpoint


def prior_scores(images: torch.Tensor, classifier: Classifier, ref: Reference,
                 cfg: EvaluateConfig) -> tuple[float, float, float]:
    """FID, precision and recall of one set of generated images against the test set."""
    features = classifier_features(classifier, images, cfg.batch_size)
    precision, recall = precision_recall(ref.pr_real, features, cfg.pr_neighbours,
                                         real_radii=ref.pr_radii)
    return frechet_distance(*gaussian_stats(features), *ref.test_stats), precision, recall


class _Clock:
    """Seconds of each named step, for the details file."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name], self._last = now - self._last, now


@dataclass
class CheckpointResult:
    metrics: dict   # numbers only: reports/evaluate.json
    details: dict   # lists and timings: reports/evaluate_details.json
    arrays: dict    # what visualize draws: data/evaluate/<model>/<checkpoint>.npz


def latent_metrics(model: VAE, ref: Reference, classifier: Classifier | None,
                   cfg: EvaluateConfig, seed: int) -> tuple[dict, dict, torch.Tensor, np.ndarray]:
    """Active units, the KL and activity of each dimension, and (with classes) the linear
    probe and the silhouette of the test posterior means; also those means and log-variances."""
    mu, logvar = encode(model, ref.test_x, cfg.batch_size)
    mu_np, logvar_np = mu.cpu().numpy(), logvar.cpu().numpy()
    m = {"active_units": int(active_units(mu_np).sum())}
    details = {"kl_per_dim": kl_per_dim(mu_np, logvar_np).tolist(),
               "activity": unit_activity(mu_np).tolist()}
    if classifier is not None:
        probe_mu, _ = encode(model, ref.probe_x, cfg.batch_size)
        m["probe_accuracy"] = probe_accuracy(probe_mu.cpu().numpy(), ref.probe_y, mu_np,
                                             ref.test_y)
        m["probe_accuracy_se"] = share_standard_error(m["probe_accuracy"], len(mu_np))
        m["silhouette"] = silhouette(mu_np, ref.test_y, cfg.silhouette_images, seed)
    return m, details, mu, logvar_np


def _fid(images: torch.Tensor, classifier: Classifier, ref: Reference, batch: int) -> float:
    return frechet_distance(*gaussian_stats(classifier_features(classifier, images, batch)),
                            *ref.test_stats)


def prior_metrics(model: VAE, ref: Reference, classifier: Classifier, cfg: EvaluateConfig,
                  seed: int) -> tuple[dict, torch.Tensor]:
    """FID, precision and recall of decoded prior draws, with their spread over fresh draws of
    as many images as their standard error (resampling one draw would repeat points, and zero
    their k-NN radii); also the first draw's images."""
    n, bs = cfg.samples, cfg.batch_size
    prior = decode_mean(model, model.sample_prior(n, _generator(seed, NOISE_PRIOR)), bs)
    if classifier is None:
        return {}, prior
    draws = [prior_scores(prior, classifier, ref, cfg)]
    redraws = _generator(seed, NOISE_PRIOR_REDRAWS)
    for _ in range(cfg.prior_draws - 1):
        draws.append(prior_scores(decode_mean(model, model.sample_prior(n, redraws), bs),
                                  classifier, ref, cfg))
    m: dict = {}
    for key, values in zip(("fid", "precision", "recall"), zip(*draws)):
        m[key] = values[0]
        m[f"{key}_se"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return m, prior


def frozen_metrics(model: VAE, prior: torch.Tensor, ref: Reference,
                   classifier: Classifier | None, cfg: EvaluateConfig,
                   seed: int) -> tuple[dict, list[torch.Tensor]]:
    """Recipe 002's frozen latents: mu = 0 and a fixed sigma, z = sigma * eps. One eps draw is
    shared by the three sigmas (they differ only in scale); the prior baseline is the prior
    set, an independent draw, so sigma = 1 against it shows the sampling noise. Diversity,
    and FID where there are classes; also the images the figures keep."""
    n_div = min(cfg.diversity_images, cfg.samples)
    m = {"frozen_diversity_prior": diversity(prior[:n_div])}
    eps = torch.randn((cfg.samples, model.latent_dim), generator=_generator(seed, NOISE_FROZEN))
    frozen = [prior[:N_SAVED_FROZEN]]
    for sigma in FROZEN_SIGMAS:
        images = decode_mean(model, sigma * eps, cfg.batch_size)
        m[f"frozen_diversity_{frozen_key(sigma)}"] = diversity(images[:n_div])
        if classifier is not None:
            m[f"frozen_fid_{frozen_key(sigma)}"] = _fid(images, classifier, ref, cfg.batch_size)
        frozen.append(images[:N_SAVED_FROZEN])
    return m, frozen


def figure_arrays(model: VAE, ref: Reference, mu: torch.Tensor, logvar: np.ndarray,
                  prior: torch.Tensor, frozen: list[torch.Tensor], batch: int) -> dict:
    """What the visualize stage draws: latent means, prior samples, reconstructions of one or
    more test images of each class, the frozen-latent images."""
    index = recon_indices(ref.test_y)
    recon = decode_mean(model, mu[torch.as_tensor(index).to(mu.device)], batch)
    return {
        "mu": mu.cpu().numpy().astype(np.float32), "logvar": logvar.astype(np.float32),
        "labels": ref.test_y.astype(np.int64),
        "samples": prior[:N_SAVED_SAMPLES].cpu().numpy().astype(np.float32),
        "recon_index": index,
        "recon": recon.cpu().numpy().astype(np.float32),
        "frozen_sigmas": np.asarray(FROZEN_SIGMAS, dtype=np.float32),
        "frozen": torch.stack(frozen).cpu().numpy().astype(np.float32),
    }


def test_nll(model: VAE, scored: torch.Tensor, scorings: dict, k: int, cfg: EvaluateConfig,
             seed: int) -> tuple[dict, dict]:
    """The literature's test NLL: the importance-weighted bound with ``k`` samples on every
    image of ``scored`` (the test set as the model is scored on it), mean and standard error
    in nats. The decoder sees as many latents per call as the IWAE gain's
    (``iwae_batch * iwae_samples``), at least one image's ``k``."""
    likelihood, pixels = scorings["own"]
    batch = max(1, cfg.iwae_batch * cfg.iwae_samples // k)
    start = time.perf_counter()
    nll, _ = iwae_bound(model, scored, k, batch, _generator(seed, NOISE_TEST_NLL), likelihood,
                        pixels)
    return ({"test_nll": float(nll.mean()), "test_nll_se": standard_error(nll)},
            {"samples": k, "images": len(nll), "seconds": time.perf_counter() - start})


def evaluate_checkpoint(model: VAE, ref: Reference, classifier: Classifier | None,
                        cfg: EvaluateConfig, seed: int, pixels: str = "levels",
                        nll_samples: int = 0) -> CheckpointResult:
    """Every measure of one VAE checkpoint; the model carries its likelihood and prior,
    ``pixels`` is what it trained on (:func:`vaepipe.train.checkpoints.trained_pixels`): a
    model of binarized pixels is scored on the one fixed binarization of the test set, and
    has no 8-bit rate. Without a ``classifier`` (one class) nothing class-dependent is
    measured. ``nll_samples`` > 0 adds :func:`test_nll` with that many samples. Every call of the model goes through :func:`vaepipe.models.batches.inference`."""
    clock = _Clock()
    binarized = pixels == "binarized"
    scored = ref.test_binary if binarized else ref.test_x
    floor = ref.test_floor if not binarized else binary_entropy_per_image(scored.cpu().numpy())
    scorings = scorings_of(model.likelihood, binarized)
    m, nelbo, rate_nats = elbo_metrics(model, scored, scorings, floor, seed * 1000 + NOISE_ELBO)
    clock.lap("elbo")
    iwae, iwae_details = iwae_metrics(
        model, scored[ref.iwae_index], scorings, cfg.iwae_samples, cfg.iwae_batch,
        seed * 1000 + NOISE_IWAE, len(ref.iwae_index) == len(ref.test_x), nelbo, rate_nats)
    clock.lap("iwae")
    if nll_samples:
        nll, details_nll = test_nll(model, scored, scorings, nll_samples, cfg, seed)
        iwae.update(nll)
        iwae_details["test_nll"] = details_nll
        clock.lap("test_nll")
    latents, details, mu, logvar = latent_metrics(model, ref, classifier, cfg, seed)
    clock.lap("latents")
    if classifier is not None:
        # reconstructions from the means of the test subset (as many images as a generated set)
        recon = decode_mean(model, mu[ref.subset.to(mu.device)], cfg.batch_size)
        m["fid_recon"] = _fid(recon, classifier, ref, cfg.batch_size)
    clock.lap("fid_recon")
    prior_m, prior = prior_metrics(model, ref, classifier, cfg, seed)
    clock.lap("prior")
    frozen_m, frozen = frozen_metrics(model, prior, ref, classifier, cfg, seed)
    clock.lap("frozen")
    m.update(iwae, **latents, **prior_m, **frozen_m)
    arrays = figure_arrays(model, ref, mu, logvar, prior, frozen, cfg.batch_size)
    details.update(iwae=iwae_details, seconds=clock.timings)
    # a binarized model has no 8-bit rate; only Bernoulli decoders have a BCE floor; one class
    # has no class-dependent measure
    return CheckpointResult({k: m[k] for k in METRICS if k in m}, details, arrays)
