"""Evaluation measures that need no model: they take pixels, latents or feature vectors.

FID (Heusel et al. 2017), improved precision and recall (Kynkaanniemi et al. 2019), active
units (Burda et al. 2015), the Bernoulli reconstruction floor, bits per dimension, recipe 002's
diversity, the scikit-learn probes of a latent space and the seeded subsets they run on. The
evaluation, the beta sweep's table and the figures all call these.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

# scikit-learn and scipy here work on small matrices: one BLAS thread is as fast, does not
# fight torch's threads on a small machine, and makes the results independent of the core
# count.

# Burda et al. (2016): a unit is active if its posterior mean varies over the data
ACTIVE_THRESHOLD = 0.01


def subsample(n: int, k: int, seed: int) -> np.ndarray:
    """``min(k, n)`` distinct indices of ``range(n)``, seeded, in increasing order."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def bits_per_dim(nats_per_image: float, pixels: int) -> float:
    """Nats per image -> bits per pixel value: ``nats / (pixels * ln 2)`` (recipe 000)."""
    return nats_per_image / (pixels * math.log(2))


def standard_error(values) -> float:
    """Standard error of the mean of ``values``: the sample standard deviation (ddof=1) over
    sqrt(n). It says how precisely these values measure their mean, nothing about other noise."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(v) < 2:
        raise ValueError(f"a standard error needs at least two values, got {len(v)}")
    return float(v.std(ddof=1) / math.sqrt(len(v)))


def share_standard_error(share: float, n: int) -> float:
    """Standard error of a share of ``n`` yes/no outcomes (an accuracy): ``sqrt(p (1 - p) /
    (n - 1))``, what :func:`standard_error` gives on the list of 0s and 1s."""
    return math.sqrt(share * (1.0 - share) / (n - 1))


def binary_entropy_per_image(images: np.ndarray) -> np.ndarray:
    """The lowest Bernoulli reconstruction term a decoder can reach on each uint8 image, (N,).

    With grey levels x = v / 255 as Bernoulli targets, BCE(x, p) >= H(x), the binary entropy,
    reached at p = x; summed over pixels, in nats.
    """
    x = np.arange(256, dtype=np.float64) / 255.0
    with np.errstate(divide="ignore", invalid="ignore"):
        table = -(x * np.log(x) + (1 - x) * np.log1p(-x))
    table[[0, 255]] = 0.0  # 0 log 0 = 0: black and white pixels carry no entropy
    return table[images.reshape(len(images), -1)].sum(axis=1)


def bce_floor(images: np.ndarray) -> float:
    """The BCE floor of uint8 ``images``: :func:`binary_entropy_per_image` averaged, in nats."""
    return float(binary_entropy_per_image(images).mean())


def unit_activity(mu: np.ndarray) -> np.ndarray:
    """Burda et al.'s activity A_u = Cov_x(E_q[z_u]): the variance over images of each
    posterior mean, (N, Z) -> (Z,)."""
    return np.asarray(mu, dtype=np.float64).var(axis=0)


def active_units(mu: np.ndarray, threshold: float = ACTIVE_THRESHOLD) -> np.ndarray:
    """Boolean (Z,): the dimensions whose activity A_u exceeds ``threshold``."""
    return unit_activity(mu) > threshold


def kl_per_dim(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Closed-form KL(q(z_u | x) || N(0, 1)) per latent dimension, averaged over images: (Z,)."""
    mu, logvar = np.asarray(mu, np.float64), np.asarray(logvar, np.float64)
    return (0.5 * (mu ** 2 + np.exp(logvar) - 1.0 - logvar)).mean(axis=0)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of (N, F) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrtm_psd_product(sigma1: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """(S1 S2)^(1/2) by ``scipy.linalg.sqrtm``, retried with 1e-6 on both diagonals when the
    root is not finite or does not square back (near-singular covariances, e.g. dead ReLU
    features), as pytorch-fid does."""
    for offset in (0.0, 1e-6):
        a = (sigma1 + offset * np.eye(len(sigma1))) @ (sigma2 + offset * np.eye(len(sigma2)))
        with warnings.catch_warnings():  # singular input: judged by the residual below
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            root = scipy.linalg.sqrtm(a)
        if np.isfinite(root).all():
            residual = np.linalg.norm(root @ root - a) / max(np.linalg.norm(a), 1e-300)
            if residual < 1e-6:
                break
    return root


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    ``sqrtm`` of a product of two PSD matrices is real in exact arithmetic; rounding leaves
    tiny imaginary parts, dropped here. An imaginary part that is not tiny means the input is
    wrong, and raises.
    """
    diff = mu1 - mu2
    with threadpool_limits(1, user_api="blas"):
        covmean = _sqrtm_psd_product(sigma1, sigma2)
    if np.iscomplexobj(covmean):
        scale = max(np.abs(covmean.real).max(), 1.0)
        if np.abs(covmean.imag).max() > 1e-3 * scale:
            raise ValueError(f"FID: (S1 S2)^(1/2) has an imaginary part of "
                             f"{np.abs(covmean.imag).max():.3g}; the covariances are not PSD")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))  # rounding can leave -1e-12 for identical sets


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two (N, F) feature sets."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def _distance_chunks(a: torch.Tensor, b: torch.Tensor, chunk: int):
    """Yield ``(start, distances of a[start:start + chunk] to b)``: (N, N_b) never lives whole."""
    for start in range(0, len(a), chunk):
        yield start, torch.cdist(a[start:start + chunk], b)


def knn_radii(features: torch.Tensor, k: int, chunk: int = 1000) -> torch.Tensor:
    """Distance from each point to its k-th nearest *other* point of the same set: (N,)."""
    if len(features) <= k:
        raise ValueError(f"k-NN radii need more than k={k} points, got {len(features)}")
    radii = torch.empty(len(features), dtype=features.dtype)
    for start, d in _distance_chunks(features, features, chunk):
        # the smallest distance is the point itself (0), so the k-th neighbour is the (k+1)-th
        radii[start:start + len(d)] = d.kthvalue(k + 1, dim=1).values
    return radii


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1000,
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of (N, F) feature sets.

    Each set's manifold is the union of balls around its points with radius the distance to
    the k-th nearest neighbour in the same set. Precision: the share of fake points inside the
    real manifold; recall: the share of real points inside the fake manifold. ``real_radii``
    (from :func:`knn_radii`) saves recomputing them when one real set meets many fake ones.
    """
    r = torch.as_tensor(np.asarray(real, dtype=np.float32))
    f = torch.as_tensor(np.asarray(fake, dtype=np.float32))
    r_radii = knn_radii(r, k, chunk) if real_radii is None else real_radii
    f_radii = knn_radii(f, k, chunk)
    fake_in_real = torch.zeros(len(f), dtype=torch.bool)
    real_in_fake = torch.zeros(len(r), dtype=torch.bool)
    for start, d in _distance_chunks(f, r, chunk):  # d: (chunk of fake, N_real)
        fake_in_real[start:start + len(d)] = (d <= r_radii[None, :]).any(dim=1)
        real_in_fake |= (d <= f_radii[start:start + len(d), None]).any(dim=0)
    return fake_in_real.double().mean().item(), real_in_fake.double().mean().item()


def diversity(images: torch.Tensor) -> float:
    """Recipe 002's diversity: the mean L2 distance over all pairs of flattened images."""
    flat = images.flatten(1).double()
    if len(flat) < 2:
        raise ValueError("diversity needs at least two images")
    return torch.pdist(flat).mean().item()


def probe_accuracy(train_z: np.ndarray, train_y: np.ndarray, test_z: np.ndarray,
                   test_y: np.ndarray) -> float:
    """Test accuracy of a multinomial logistic regression fit on standardised training points
    (float64)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    with threadpool_limits(1, user_api="blas"):
        probe.fit(np.asarray(train_z, np.float64), train_y)
        return float(probe.score(np.asarray(test_z, np.float64), test_y))


def silhouette(z: np.ndarray, labels: np.ndarray, sample_size: int | None = None,
               seed: int = 0) -> float:
    """Mean silhouette (Rousseeuw 1987) of points grouped by class, Euclidean, in [-1, 1]; on
    a subset of ``sample_size`` drawn with ``seed`` when there are more points than that."""
    from sklearn.metrics import silhouette_score

    size = sample_size if sample_size is not None and sample_size < len(z) else None
    with threadpool_limits(1, user_api="blas"):
        return float(silhouette_score(np.asarray(z, np.float64), labels, metric="euclidean",
                                      sample_size=size, random_state=seed))
