"""The evaluate stage's library: every number of one VAE checkpoint on the test set.

The ELBO terms come from :func:`vaepipe.train.loop.elbo_per_image` (the code path training
validates with); the rest is built here from the model's ``encode`` / ``decode`` and the
measures of :mod:`vaepipe.evaluate.measures`, in the feature space of
:mod:`vaepipe.evaluate.classifier`.
All noise comes from generators seeded per purpose, so every checkpoint of a run sees the
same prior draws and the same subsets (differences between checkpoints are the models'),
and a rerun on the CPU gives the same numbers bit for bit.

``bpd_8bit`` is a rate of the 8-bit test images every model is scored on (a density of
dequantized pixels, or the discretized logistic's probabilities; see
:func:`vaepipe.models.likelihoods.rate_scoring`), so it stands beside codecs and published
density models; ``bpd`` is seed 000's NELBO / (D ln 2), a rate only where the likelihood is one.
A model trained with ``data.binarize: dynamic`` is scored on one fixed binarization of the test
set: its NELBO and IWAE bound are in nats of binary images, and it has no 8-bit rate.

Every number that is a mean over test images has a ``<metric>_se`` beside it, its standard
error over those images; FID, precision and recall get theirs from repeated fresh prior draws.
They say how precisely the test set measures this one model, not how much another training
run (another seed) would move it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vaepipe.config import EvaluateConfig, TrainConfig
from vaepipe.evaluate.classifier import Classifier, classifier_features
from vaepipe.evaluate.measures import (active_units, bce_floor, binary_entropy_per_image,
                                       bits_per_dim, diversity, frechet_distance, gaussian_stats,
                                       kl_per_dim, knn_radii, precision_recall, probe_accuracy,
                                       share_standard_error, silhouette, standard_error,
                                       subsample, unit_activity)
from vaepipe.models.batches import (binarize_fixed, decode_mean, encode, in_batches, inference,
                                    to_unit_float)
from vaepipe.models.likelihoods import bits_per_dim_8bit, rate_scoring, recon_per_sample
from vaepipe.models.vae import VAE
from vaepipe.train.loop import elbo_per_image

FROZEN_SIGMAS = (0.1, 0.5, 1.0)
N_SAVED_SAMPLES = 100  # prior samples kept for the figures
N_SAVED_RECON = 16     # test images (and reconstructions) kept for the figures
N_SAVED_FROZEN = 64    # images per frozen-latent condition kept for the figures
# Offsets added to the run's seed, one generator per purpose: drawing more of one kind of
# noise (a larger K, more samples, a larger subset) never changes another kind.
(NOISE_ELBO, NOISE_IWAE, NOISE_PRIOR, NOISE_FROZEN, SUBSET_PROBE, SUBSET_IWAE, SUBSET_TEST,
 SUBSET_VAL, NOISE_PRIOR_REDRAWS) = range(9)


def frozen_key(sigma: float) -> str:
    """Metric-name suffix of a frozen-latent sigma without a dot: 0.1 -> 'sigma_0_1'."""
    return "sigma_" + f"{sigma:g}".replace(".", "_") + ("_0" if float(sigma).is_integer() else "")


# The per-checkpoint metrics, in the order reports/evaluate.json lists them.
METRICS = ("bpd_8bit", "bpd_8bit_se", "bpd_8bit_iwae", "bpd_8bit_iwae_se", "recon", "recon_se",
           "kl", "kl_se", "nelbo", "nelbo_se", "bpd", "bpd_se",
           "nelbo_above_floor", "nelbo_above_floor_se", "iwae_nll", "iwae_nll_se", "iwae_gain",
           "iwae_gain_se", "active_units", "fid", "fid_se", "precision", "precision_se",
           "recall", "recall_se", "fid_recon", "probe_accuracy", "probe_accuracy_se",
           "silhouette", "frozen_diversity_prior",
           *(f"frozen_diversity_{frozen_key(s)}" for s in FROZEN_SIGMAS),
           *(f"frozen_fid_{frozen_key(s)}" for s in FROZEN_SIGMAS))


def _generator(seed: int, offset: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + offset)


# --------------------------------------------------------------------------------------------
# The importance-weighted bound


def iwae_bound(model: VAE, images: torch.Tensor, k: int, batch: int,
               generator: torch.Generator, likelihood: str = "bernoulli",
               obs_std: float = 1.0, pixels: str = "levels") -> tuple[np.ndarray, np.ndarray]:
    """Importance-weighted bound (Burda et al. 2015) on -log p(x) of each image, in nats.

    For each image, K latents z_k = mu + sigma * eps_k from q(z | x) give log-weights
    log w_k = log p(x | z_k) + log N(z_k; 0, I) - log q(z_k | x), and
    -log p(x) <= -log (1/K sum_k w_k), computed with log-sum-exp. The decoder runs once per
    ``batch`` images on all their batch * K latents. Returns ``(IWAE bound, Monte-Carlo
    NELBO)`` per image, float64 (N,); the second is -mean_k log w_k, the ordinary ELBO
    estimate on the same noise (with K = 1 the two are equal). ``pixels``: levels, or
    dequantized (one draw per image, shared by its K latents: the bound on log p(y) of that y).
    """
    log2pi = math.log(2 * math.pi)

    def bounds(images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # noise drawn on the CPU generator, then moved: the same on every device
        x = to_unit_float(images_u8.cpu(), pixels, generator).to(images_u8.device)  # (B, C, H, W)
        mu, logvar = model.encode(x)                     # (B, Z)
        b, zdim = mu.shape
        # drawn on the CPU generator, then moved: the same noise on every device
        eps = torch.randn((b, k, zdim), generator=generator).to(mu.device)  # (B, K, Z)
        z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps
        out = model.decode(z.reshape(b * k, zdim))       # (B*K, k C, H, W)
        target = x.repeat_interleave(k, dim=0)
        log_px = -recon_per_sample(out, target, likelihood, obs_std).view(b, k)
        log_pz = -0.5 * (z.pow(2) + log2pi).sum(-1)                          # (B, K)
        log_qz = -0.5 * (eps.pow(2) + log2pi + logvar[:, None]).sum(-1)     # (B, K)
        log_w = (log_px + log_pz - log_qz).double()
        return math.log(k) - torch.logsumexp(log_w, dim=1), -log_w.mean(dim=1)

    with inference(model):
        iwae, elbo = in_batches(bounds, images, batch)
    return iwae.cpu().numpy(), elbo.cpu().numpy()


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


def _subset(n: int, size: int, seed: int, offset: int) -> np.ndarray:
    """Sorted indices of a seeded subset of ``size`` out of ``n`` (all of them if fewer)."""
    return subsample(n, size, seed * 1000 + offset)


def build_reference(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                    test: tuple[np.ndarray, np.ndarray], classifier: Classifier | None,
                    cfg: EvaluateConfig, seed: int, device: torch.device) -> Reference:
    """Subsets, real-image features and the real-vs-real floor of every measure.

    ``fid_real`` (and ``precision_real`` / ``recall_real``) compare validation images (held
    out of the official training set; neither the VAEs nor the classifier trained on them)
    with the test set, using as many images as a generated set has, so the floor carries the
    same small-sample bias as the models' numbers. With no ``classifier`` (data of one class)
    there are no features and none of these three.
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
                     torch.as_tensor(pr), pr_real, pr_radii, numbers)


# --------------------------------------------------------------------------------------------
# One checkpoint


def prior_scores(images: torch.Tensor, classifier: Classifier, ref: Reference,
                 cfg: EvaluateConfig) -> tuple[float, float, float]:
    """FID, precision and recall of one set of generated images against the test set."""
    features = classifier_features(classifier, images, cfg.batch_size)
    precision, recall = precision_recall(ref.pr_real, features, cfg.pr_neighbours,
                                         real_radii=ref.pr_radii)
    return frechet_distance(*gaussian_stats(features), *ref.test_stats), precision, recall


@dataclass
class CheckpointResult:
    metrics: dict   # numbers only: reports/evaluate.json
    details: dict   # lists and timings: reports/evaluate_details.json
    arrays: dict    # what visualize draws: data/evaluate/<model>/<checkpoint>.npz


def _importance_bound(nelbo: np.ndarray, iwae: np.ndarray, mc_nelbo: np.ndarray,
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


def _once_per_scoring(scorings: dict, compute) -> dict:
    """``{name: compute(likelihood, pixels)}`` for ``scorings`` (name -> (likelihood, pixels)),
    computed once per distinct scoring: a likelihood that is its own rate shares its pass."""
    done: dict = {}
    for scoring in scorings.values():
        if scoring not in done:
            done[scoring] = compute(*scoring)
    return {name: done[scoring] for name, scoring in scorings.items()}


def evaluate_checkpoint(model: VAE, train_cfg: TrainConfig, ref: Reference,
                        classifier: Classifier | None, cfg: EvaluateConfig, seed: int,
                        binarized: bool = False) -> CheckpointResult:
    """Every measure of one VAE checkpoint; ``train_cfg`` gives its likelihood (and obs_std),
    ``binarized`` that it trained with ``data.binarize: dynamic``.

    Every call of the model goes through :func:`vaepipe.models.batches.inference`."""
    bs, n = cfg.batch_size, cfg.samples
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    dims = math.prod(model.image_shape)
    likelihood = train_cfg.likelihood
    # the images the likelihoods score: the test set, or its one fixed binarization
    scored = ref.test_x if not binarized else torch.as_tensor(
        binarize_fixed(ref.test_x.cpu().numpy())).to(ref.test_x.device)
    # the continuous Bernoulli trained on dequantized pixels is scored on them too
    pixels = "dequantized" if likelihood == "continuous_bernoulli" else "levels"
    # (likelihood, pixels) of each scoring: the model's own, and the 8-bit rate's
    scorings = {"own": (likelihood, pixels)}
    if not binarized:
        rate_likelihood, dequantized = rate_scoring(likelihood)
        scorings["rate"] = (rate_likelihood, "dequantized" if dequantized else "levels")
    # one ELBO pass per distinct scoring, on the same seeded noise; elbo_per_image is batched by
    # train.loop.EVAL_BATCH and uses one posterior sample per image
    elbo = _once_per_scoring(scorings, lambda lik, pix: tuple(t.cpu().numpy() for t in (
        elbo_per_image(model, scored, train_cfg, pix, seed * 1000 + NOISE_ELBO, lik))))
    recon, kl = elbo["own"]
    nelbo = recon + kl
    m: dict = {}
    series = [("recon", recon), ("kl", kl), ("nelbo", nelbo), ("bpd", bits_per_dim(nelbo, dims))]
    if likelihood == "bernoulli":  # a floor of the Bernoulli cross-entropy only
        floor = ref.test_floor if not binarized else binary_entropy_per_image(
            scored.cpu().numpy())
        series.append(("nelbo_above_floor", nelbo - floor))
    if "rate" in scorings:
        rate_nats = sum(elbo["rate"])
        series.append(("bpd_8bit", bits_per_dim_8bit(rate_nats, dims, dequantized)))
    for key, values in series:
        m[key], m[f"{key}_se"] = float(values.mean()), standard_error(values)
    lap("elbo")

    whole_set = len(ref.iwae_index) == len(ref.test_x)
    iwae_x = scored[ref.iwae_index]
    # the same generator seed for every scoring: the same latents and dequantization
    bounds = _once_per_scoring(scorings, lambda lik, pix: iwae_bound(
        model, iwae_x, cfg.iwae_samples, cfg.iwae_batch, _generator(seed, NOISE_IWAE), lik,
        train_cfg.obs_std, pix))
    iwae, mc_nelbo = bounds["own"]
    m["iwae_nll"], m["iwae_nll_se"], m["iwae_gain"], m["iwae_gain_se"] = _importance_bound(
        nelbo, iwae, mc_nelbo, whole_set)
    iwae_details = {"images": len(iwae), "subset_iwae_nll": float(iwae.mean()),
                    "subset_mc_nelbo": float(mc_nelbo.mean())}
    if "rate" in scorings:
        rate_bound, rate_se, rate_gain, _ = _importance_bound(rate_nats, *bounds["rate"],
                                                              whole_set)
        m["bpd_8bit_iwae"] = bits_per_dim_8bit(rate_bound, dims, dequantized)
        m["bpd_8bit_iwae_se"] = bits_per_dim(rate_se, dims)
        iwae_details["rate_gain_nats"] = rate_gain
    lap("iwae")

    mu, logvar = encode(model, ref.test_x, bs)
    mu_np, logvar_np = mu.cpu().numpy(), logvar.cpu().numpy()
    m["active_units"], activity = int(active_units(mu_np).sum()), unit_activity(mu_np)
    per_dim = kl_per_dim(mu_np, logvar_np)
    classes = classifier is not None  # False: one class, nothing class-dependent to measure
    if classes:
        probe_mu, _ = encode(model, ref.probe_x, bs)
        m["probe_accuracy"] = probe_accuracy(probe_mu.cpu().numpy(), ref.probe_y, mu_np,
                                             ref.test_y)
        m["probe_accuracy_se"] = share_standard_error(m["probe_accuracy"], len(mu_np))
        m["silhouette"] = silhouette(mu_np, ref.test_y, cfg.silhouette_images, seed)
    lap("latents")

    def fid_of(images: torch.Tensor) -> float:
        return frechet_distance(*gaussian_stats(classifier_features(classifier, images, bs)),
                                *ref.test_stats)

    if classes:
        # reconstructions from the means of the test subset (as many images as a generated set)
        m["fid_recon"] = fid_of(decode_mean(model, mu[ref.subset.to(mu.device)], bs))
    lap("fid_recon")

    zdim = model.latent_dim
    prior = decode_mean(model, torch.randn((n, zdim), generator=_generator(seed, NOISE_PRIOR)), bs)
    if classes:
        draws = [prior_scores(prior, classifier, ref, cfg)]
        # the spread of the three over fresh prior draws of as many images is their standard
        # error (resampling one draw would repeat points, and zero their k-NN radii)
        redraws = _generator(seed, NOISE_PRIOR_REDRAWS)
        for _ in range(cfg.prior_draws - 1):
            z = torch.randn((n, zdim), generator=redraws)
            draws.append(prior_scores(decode_mean(model, z, bs), classifier, ref, cfg))
        for key, values in zip(("fid", "precision", "recall"), zip(*draws)):
            m[key] = values[0]
            m[f"{key}_se"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    lap("prior")

    # Seed 002's frozen latents: mu = 0 and a fixed sigma, z = sigma * eps. One eps draw is
    # shared by the three sigmas (they differ only in scale); the N(0, I) baseline is the
    # prior set above, an independent draw, so sigma = 1 against it shows the sampling noise.
    n_div = min(cfg.diversity_images, n)
    m["frozen_diversity_prior"] = diversity(prior[:n_div])
    eps = torch.randn((n, zdim), generator=_generator(seed, NOISE_FROZEN))
    frozen = [prior[:N_SAVED_FROZEN]]
    for sigma in FROZEN_SIGMAS:
        images = decode_mean(model, sigma * eps, bs)
        m[f"frozen_diversity_{frozen_key(sigma)}"] = diversity(images[:n_div])
        if classes:
            m[f"frozen_fid_{frozen_key(sigma)}"] = fid_of(images)
        frozen.append(images[:N_SAVED_FROZEN])
    lap("frozen")

    index = recon_indices(ref.test_y)
    arrays = {
        "mu": mu_np.astype(np.float32), "logvar": logvar_np.astype(np.float32),
        "labels": ref.test_y.astype(np.int64),
        "samples": prior[:N_SAVED_SAMPLES].cpu().numpy().astype(np.float32),
        "recon_index": index,
        "recon": decode_mean(model, mu[torch.as_tensor(index).to(mu.device)], bs)
        .cpu().numpy().astype(np.float32),
        "frozen_sigmas": np.asarray(FROZEN_SIGMAS, dtype=np.float32),
        "frozen": torch.stack(frozen).cpu().numpy().astype(np.float32),
    }
    details = {"kl_per_dim": per_dim.tolist(), "activity": activity.tolist(),
               "iwae": iwae_details, "seconds": timings}
    # a binarized model has no 8-bit rate; only Bernoulli decoders have a BCE floor; one class
    # has no class-dependent measure
    return CheckpointResult({k: m[k] for k in METRICS if k in m}, details, arrays)
