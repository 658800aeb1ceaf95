"""The evaluate stage's library: every number of one VAE checkpoint on the test set.

The ELBO terms come from :func:`vaepipe.training.evaluate_elbo` (the code path training
validates with); the rest is built here from the model's ``encode`` / ``decode`` and the
measures of :mod:`vaepipe.metrics`, in the feature space of :mod:`vaepipe.classifier`.
All noise comes from generators seeded per purpose, so every checkpoint of a run sees the
same prior draws and the same subsets (differences between checkpoints are the models'),
and a rerun on the CPU gives the same numbers bit for bit.
"""
from __future__ import annotations

import math
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vaepipe.classifier import Classifier
from vaepipe.config import EvaluateConfig, TrainConfig
from vaepipe.io import atomic_path
from vaepipe.metrics import (active_units, bce_floor, bits_per_dim, diversity,
                             frechet_distance, gaussian_stats, kl_per_dim, knn_radii,
                             precision_recall, probe_accuracy, silhouette)
from vaepipe.models import VAE
from vaepipe.objective import recon_per_sample
from vaepipe.training import evaluate_elbo, to_unit_float

MODEL_KINDS = ("mlp", "conv")
CHECKPOINTS = ("epoch_01", "best", "final")
FROZEN_SIGMAS = (0.1, 0.5, 1.0)
N_SAVED_SAMPLES = 100  # prior samples kept for the figures
N_SAVED_RECON = 16     # test images (and reconstructions) kept for the figures
N_SAVED_FROZEN = 64    # images per frozen-latent condition kept for the figures
# Offsets added to the run's seed, one generator per purpose: drawing more of one kind of
# noise (a larger K, more samples, a larger subset) never changes another kind.
(NOISE_ELBO, NOISE_IWAE, NOISE_PRIOR, NOISE_FROZEN, SUBSET_PROBE, SUBSET_IWAE, SUBSET_TEST,
 SUBSET_VAL) = range(8)


def frozen_key(sigma: float) -> str:
    """Metric-name suffix of a frozen-latent sigma without a dot: 0.1 -> 'sigma_0_1'."""
    return "sigma_" + f"{sigma:g}".replace(".", "_") + ("_0" if float(sigma).is_integer() else "")


# The per-checkpoint metrics, in the order reports/evaluate.json lists them.
METRICS = ("recon", "kl", "nelbo", "bpd", "nelbo_above_floor", "iwae_nll", "iwae_gain",
           "active_units", "fid", "precision", "recall", "fid_recon", "probe_accuracy",
           "silhouette", "frozen_diversity_prior",
           *(f"frozen_diversity_{frozen_key(s)}" for s in FROZEN_SIGMAS),
           *(f"frozen_fid_{frozen_key(s)}" for s in FROZEN_SIGMAS))


def _generator(seed: int, offset: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + offset)


# --------------------------------------------------------------------------------------------
# Running models in batches


@torch.inference_mode()
def encode(model: VAE, images: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances (N, Z) of uint8 ``images`` (N, C, H, W)."""
    parts = [model.encode(to_unit_float(images[i:i + batch]))
             for i in range(0, len(images), batch)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.inference_mode()
def decode_mean(model: VAE, z: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean images sigmoid(decode(z)) in [0, 1], (N, C, H, W), on the model's device.

    ``z`` may live on the CPU (seeded draws are made there, so every device decodes the same
    latents); each batch is moved to the model's device.
    """
    device = next(model.parameters()).device
    return torch.cat([torch.sigmoid(model.decode(z[i:i + batch].to(device)))
                      for i in range(0, len(z), batch)])


@torch.inference_mode()
def features(classifier: Classifier, images: torch.Tensor, batch: int) -> np.ndarray:
    """The classifier's penultimate features (N, F) of float images in [0, 1] or uint8 ones."""
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        out.append(classifier.features(to_unit_float(x) if x.dtype == torch.uint8 else x))
    return torch.cat(out).double().cpu().numpy()


@torch.inference_mode()
def iwae_bound(model: VAE, images: torch.Tensor, k: int, batch: int,
               generator: torch.Generator, likelihood: str = "bernoulli",
               obs_std: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Importance-weighted bound (Burda et al. 2015) on -log p(x) of each image, in nats.

    For each image, K latents z_k = mu + sigma * eps_k from q(z | x) give log-weights
    log w_k = log p(x | z_k) + log N(z_k; 0, I) - log q(z_k | x), and
    -log p(x) <= -log (1/K sum_k w_k), computed with log-sum-exp. The decoder runs once per
    ``batch`` images on all their batch * K latents. Returns ``(IWAE bound, Monte-Carlo
    NELBO)`` per image, float64 (N,); the second is -mean_k log w_k, the ordinary ELBO
    estimate on the same noise (with K = 1 the two are equal).
    """
    model.eval()
    iwae, elbo = [], []
    log2pi = math.log(2 * math.pi)
    for i in range(0, len(images), batch):
        x = to_unit_float(images[i:i + batch])          # (B, C, H, W)
        mu, logvar = model.encode(x)                     # (B, Z)
        b, zdim = mu.shape
        # drawn on the CPU generator, then moved: the same noise on every device
        eps = torch.randn((b, k, zdim), generator=generator).to(mu.device)  # (B, K, Z)
        z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps
        logits = model.decode(z.reshape(b * k, zdim))    # (B*K, C, H, W)
        target = x.repeat_interleave(k, dim=0)
        log_px = -recon_per_sample(logits, target, likelihood, obs_std).view(b, k)
        log_pz = -0.5 * (z.pow(2) + log2pi).sum(-1)                          # (B, K)
        log_qz = -0.5 * (eps.pow(2) + log2pi + logvar[:, None]).sum(-1)     # (B, K)
        log_w = (log_px + log_pz - log_qz).double()
        iwae.append(math.log(k) - torch.logsumexp(log_w, dim=1))
        elbo.append(-log_w.mean(dim=1))
    return torch.cat(iwae).cpu().numpy(), torch.cat(elbo).cpu().numpy()


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
    iwae_x: torch.Tensor        # uint8, a seeded subset of the test set
    test_features: np.ndarray   # (N, F)
    test_stats: tuple[np.ndarray, np.ndarray]
    subset: torch.Tensor        # int64 indices of a seeded test subset of evaluate.samples
    pr_real: np.ndarray         # features of those test images
    pr_radii: torch.Tensor      # their k-NN radii (precision/recall), computed once
    numbers: dict = field(default_factory=dict)  # the report's `reference` block


def _subset(n: int, size: int, seed: int, offset: int) -> np.ndarray:
    """Sorted indices of a seeded subset of ``size`` out of ``n`` (all of them if fewer)."""
    rng = np.random.default_rng(seed * 1000 + offset)
    return np.arange(n) if size >= n else np.sort(rng.choice(n, size, replace=False))


@torch.inference_mode()
def build_reference(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                    test: tuple[np.ndarray, np.ndarray], classifier: Classifier,
                    cfg: EvaluateConfig, seed: int, device: torch.device) -> Reference:
    """Subsets, real-image features and the real-vs-real floor of every measure.

    ``fid_real`` (and ``precision_real`` / ``recall_real``) compare validation images (held
    out of the official training set; neither the VAEs nor the classifier trained on them)
    with the test set, using as many images as a generated set has, so the floor carries the
    same small-sample bias as the models' numbers.
    """
    test_x = torch.as_tensor(test[0]).to(device)
    probe = _subset(len(train[0]), cfg.probe_images, seed, SUBSET_PROBE)
    iwae = _subset(len(test[0]), cfg.iwae_images, seed, SUBSET_IWAE)
    pr = _subset(len(test[0]), cfg.samples, seed, SUBSET_TEST)
    real = _subset(len(val[0]), cfg.samples, seed, SUBSET_VAL)
    test_features = features(classifier, test_x, cfg.batch_size)
    test_stats = gaussian_stats(test_features)
    val_features = features(classifier, torch.as_tensor(val[0][real]).to(device), cfg.batch_size)
    precision, recall = precision_recall(test_features[pr], val_features, cfg.pr_neighbours)
    numbers = {
        "bce_floor_test": bce_floor(test[0]),
        "bce_floor_val": bce_floor(val[0]),
        "fid_real": frechet_distance(*gaussian_stats(val_features), *test_stats),
        "precision_real": precision,
        "recall_real": recall,
        "iwae_samples": cfg.iwae_samples,
        "iwae_images": len(iwae),
        "samples": cfg.samples,
        "real_images": len(real),
        "test_images": len(test_x),
    }
    return Reference(test_x, test[1], torch.as_tensor(train[0][probe]).to(device),
                     train[1][probe], test_x[torch.as_tensor(iwae).to(device)],
                     test_features, test_stats, torch.as_tensor(pr), test_features[pr],
                     knn_radii(torch.as_tensor(test_features[pr], dtype=torch.float32),
                               cfg.pr_neighbours), numbers)


# --------------------------------------------------------------------------------------------
# One checkpoint


@dataclass
class CheckpointResult:
    metrics: dict   # numbers only: reports/evaluate.json
    details: dict   # lists and timings: reports/evaluate_details.json
    arrays: dict    # what visualize draws: data/evaluate/<model>/<checkpoint>.npz


@torch.inference_mode()
def evaluate_checkpoint(model: VAE, train_cfg: TrainConfig, ref: Reference,
                        classifier: Classifier, cfg: EvaluateConfig, seed: int
                        ) -> CheckpointResult:
    """Every measure of one VAE checkpoint; ``train_cfg`` gives its likelihood (and obs_std)."""
    model.eval()
    bs, n = cfg.batch_size, cfg.samples
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    pixels = math.prod(model.image_shape)
    # evaluate_elbo is batched by training.EVAL_BATCH and uses one posterior sample per image
    elbo = evaluate_elbo(model, ref.test_x, 1.0, train_cfg, dequantize=False,
                         seed=seed * 1000 + NOISE_ELBO)
    m = {"recon": elbo["recon"], "kl": elbo["kl"], "nelbo": elbo["nelbo"],
         "bpd": bits_per_dim(elbo["nelbo"], pixels),
         "nelbo_above_floor": elbo["nelbo"] - ref.numbers["bce_floor_test"]}
    lap("elbo")

    iwae, mc_nelbo = iwae_bound(model, ref.iwae_x, cfg.iwae_samples, cfg.iwae_batch,
                                _generator(seed, NOISE_IWAE), train_cfg.likelihood,
                                train_cfg.obs_std)
    # The gain of the bound over the ELBO is measured on a subset, paired (same images, same
    # latents); the test-set bound is the test-set NELBO minus that gain (a difference
    # estimator: its error is the gain's, ~0.1 nats, not the subset's spread of -log p(x),
    # which is tens of nats per image and put the raw subset mean 3.5 nats off).
    gain = mc_nelbo - iwae
    m["iwae_gain"] = float(gain.mean())
    m["iwae_nll"] = m["nelbo"] - m["iwae_gain"]
    iwae_details = {"images": len(iwae), "subset_iwae_nll": float(iwae.mean()),
                    "subset_mc_nelbo": float(mc_nelbo.mean()),
                    "gain_standard_error": float(gain.std(ddof=1) / math.sqrt(len(gain)))
                    if len(gain) > 1 else None}
    lap("iwae")

    mu, logvar = encode(model, ref.test_x, bs)
    mu_np, logvar_np = mu.cpu().numpy(), logvar.cpu().numpy()
    m["active_units"], activity = active_units(mu_np)
    per_dim = kl_per_dim(mu_np, logvar_np)
    probe_mu, _ = encode(model, ref.probe_x, bs)
    m["probe_accuracy"] = probe_accuracy(probe_mu.cpu().numpy(), ref.probe_y, mu_np, ref.test_y)
    m["silhouette"] = silhouette(mu_np, ref.test_y, cfg.silhouette_images, seed)
    lap("latents")

    # reconstructions from the means of the test subset (as many images as a generated set)
    recon = decode_mean(model, mu[ref.subset.to(mu.device)], bs)
    m["fid_recon"] = frechet_distance(*gaussian_stats(features(classifier, recon, bs)),
                                      *ref.test_stats)
    lap("fid_recon")

    zdim = model.latent_dim
    prior = decode_mean(model, torch.randn((n, zdim), generator=_generator(seed, NOISE_PRIOR)), bs)
    prior_features = features(classifier, prior, bs)
    m["fid"] = frechet_distance(*gaussian_stats(prior_features), *ref.test_stats)
    m["precision"], m["recall"] = precision_recall(ref.pr_real, prior_features, cfg.pr_neighbours,
                                                   real_radii=ref.pr_radii)
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
        m[f"frozen_fid_{frozen_key(sigma)}"] = frechet_distance(
            *gaussian_stats(features(classifier, images, bs)), *ref.test_stats)
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
    return CheckpointResult({k: m[k] for k in METRICS}, details, arrays)


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed ``.npz`` (``np.load`` reads it; no pickles) whose bytes depend only on
    the arrays: ``np.savez`` stamps the time into each member, so every rerun would hand the
    figures stage "new" inputs."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)


# --------------------------------------------------------------------------------------------
# The readable summary, reports/evaluation.md

_ROWS = [  # (metric, label, format)
    ("recon", "reconstruction -log p(x|z) (nats)", ".2f"),
    ("kl", "KL(q(z|x) ‖ p(z)) (nats)", ".2f"),
    ("nelbo", "NELBO (nats)", ".2f"),
    ("bpd", "bits/dim", ".4f"),
    ("nelbo_above_floor", "NELBO above the BCE floor (nats)", ".2f"),
    ("iwae_nll", "IWAE bound on -log p(x) (nats)", ".2f"),
    ("iwae_gain", "IWAE gain over the ELBO (nats)", ".2f"),
    ("active_units", "active units", "d"),
    ("fid", "FID, prior samples", ".2f"),
    ("precision", "precision (k-NN)", ".3f"),
    ("recall", "recall (k-NN)", ".3f"),
    ("fid_recon", "FID, reconstructions", ".2f"),
    ("probe_accuracy", "linear probe accuracy", ".3f"),
    ("silhouette", "silhouette of latent means by class", ".3f"),
]
_TITLES = {"mlp": "MLP VAE", "conv": "Convolutional VAE"}


def summary_markdown(results: dict, reference: dict, classifier: dict, cfg: EvaluateConfig,
                     seed: int, dataset: str, latent_dims: dict) -> str:
    """``reports/evaluation.md``: one table per model, the frozen-latent table, the classifier,
    and how each number was computed. Headings are ``###`` so the report can embed it."""
    out = [f"### Evaluation on the {dataset} test set", "",
           f"{reference['test_images']:,} test images, seed {seed}. Nats per image "
           f"(summed over pixels or latent dimensions, averaged over images); KL weight 1 "
           f"whatever beta trained the model. Lower is better for nats, bits/dim and FID; "
           f"higher for precision, recall, probe accuracy and silhouette.", ""]
    for kind, by_ckpt in results.items():
        ckpts = list(by_ckpt)
        out += [f"### {_TITLES.get(kind, kind)} (`models/{kind}`, z = {latent_dims[kind]})", "",
                "| metric | " + " | ".join(f"`{c}`" for c in ckpts) + " |",
                "|---|" + "---:|" * len(ckpts)]
        for key, label, fmt in _ROWS:
            out.append(f"| {label} | " + " | ".join(format(by_ckpt[c][key], fmt) for c in ckpts)
                       + " |")
        out.append("")

    sigmas = [frozen_key(s) for s in FROZEN_SIGMAS]
    out += ["### Frozen latents (seed 002, section 9)", "",
            "Images decoded from z = sigma * eps (mu frozen at 0) beside the N(0, I) baseline: "
            "diversity (mean pairwise L2 distance, pixels in [0, 1]) / FID.", "",
            "| model | checkpoint | N(0, I) | " + " | ".join(f"sigma {s:g}" for s in FROZEN_SIGMAS)
            + " |", "|---|---|---:|" + "---:|" * len(sigmas)]
    for kind, by_ckpt in results.items():
        for ckpt, m in by_ckpt.items():
            cells = [f"{m['frozen_diversity_prior']:.2f} / {m['fid']:.2f}"]
            cells += [f"{m[f'frozen_diversity_{s}']:.2f} / {m[f'frozen_fid_{s}']:.2f}"
                      for s in sigmas]
            out.append(f"| {kind} | `{ckpt}` | " + " | ".join(cells) + " |")
    out.append("")

    r = reference
    out += ["### Reference points", "",
            "| measure | value |", "|---|---:|",
            f"| BCE floor, test set (nats) | {r['bce_floor_test']:.2f} |",
            f"| BCE floor, validation split (nats) | {r['bce_floor_val']:.2f} |",
            f"| FID, real vs real ({r['real_images']:,} validation vs test images) | "
            f"{r['fid_real']:.2f} |",
            f"| precision / recall, real vs real | {r['precision_real']:.3f} / "
            f"{r['recall_real']:.3f} |",
            f"| feature classifier, test accuracy | {classifier['test_accuracy']:.4f} |", "",
            f"The feature classifier (`models/classifier.pt`) is a CNN with channels "
            f"{classifier['channels']} and a {classifier['features']}-unit penultimate layer, "
            f"trained for {classifier['epochs']} epochs on the training split; its test "
            f"accuracy is {100 * classifier['test_accuracy']:.2f} %.", ""]

    k = r["iwae_samples"]
    out += ["### How each number is computed", "",
            "- **reconstruction, KL, NELBO**: `vaepipe.training.evaluate_elbo` on the whole test "
            "set, one posterior sample per image (seeded), Bernoulli BCE with logits summed over "
            "pixels, closed-form Gaussian KL; NELBO = reconstruction + KL.",
            "- **bits/dim**: NELBO / (pixels × ln 2), as seed 000 defines it (a grey-level "
            "Bernoulli likelihood is not a density over 8-bit values, so this compares models, "
            "not codecs).",
            "- **BCE floor**: the summed binary entropy of the pixel intensities v/255, averaged "
            "over images: no decoder can score a lower reconstruction term. NELBO above the "
            "floor = NELBO − the test set's floor.",
            f"- **IWAE gain**: the importance-weighted bound (Burda et al. 2015) with K = {k} "
            f"samples from q(z|x) (log-sum-exp in float64; the decoder runs on "
            f"{cfg.iwae_batch} × K latents at a time), subtracted from the Monte-Carlo NELBO "
            f"of the same latents, averaged over a seeded subset of {r['iwae_images']:,} test "
            f"images. **IWAE bound** = test-set NELBO − gain: an estimate of the bound's "
            f"test-set mean whose error is the gain's (standard error in "
            f"`reports/evaluate_details.json`), not the subset's spread of -log p(x).",
            "- **active units**: latent dimensions whose posterior mean varies across test "
            "images by more than 0.01 (Cov_x E_q[z_u] > 0.01, Burda et al.); the KL of each "
            "dimension is in `reports/evaluate_details.json`.",
            f"- **FID**: Fréchet distance between Gaussians fitted to the classifier's "
            f"penultimate features of {r['samples']:,} prior samples z ~ N(0, I) decoded to "
            f"sigmoid(logits), and of all {r['test_images']:,} test images "
            f"(`scipy.linalg.sqrtm`, tiny imaginary parts dropped). Not comparable with "
            f"Inception FIDs from papers.",
            f"- **precision / recall**: Kynkäänniemi et al. 2019 with k = {cfg.pr_neighbours}, "
            f"in the same feature space, {r['samples']:,} prior samples against a seeded subset "
            f"of as many test images.",
            f"- **FID, reconstructions**: sigmoid(decode(mu)) of the same {r['samples']:,} "
            f"seeded test images against all test images, as for the samples.",
            f"- **linear probe**: logistic regression (standardised inputs) on the posterior "
            f"means of {cfg.probe_images:,} seeded training images, scored on the test set.",
            f"- **silhouette**: scikit-learn's silhouette score of the test posterior means, "
            f"grouped by class, on a seeded subset of {cfg.silhouette_images:,}.",
            f"- **frozen latents**: {r['samples']:,} images per sigma from one seeded eps draw "
            f"(shared by the three sigmas); the N(0, I) column is the prior set of the FID "
            f"row, an independent draw, so sigma 1 beside it shows pure sampling noise. "
            f"Diversity is averaged over all pairs of the first "
            f"{min(cfg.diversity_images, r['samples']):,} images of each set.",
            "- **real vs real**: validation images (held out of the official training set; "
            "neither the VAEs nor the classifier saw them) against the test set, as many as a "
            "generated set, so the floor has the same small-sample bias as the models' FIDs.",
            ""]
    return "\n".join(out)
