"""What the figures show about a latent space: projections, posterior samples, latent walks.

Works on what ``evaluate`` saved (the test set's posterior means and log-variances) and on a
model's decoder; nothing here re-encodes images. Seeded throughout: the same arrays and seed
give the same numbers.
"""
from __future__ import annotations

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from vaepipe.models.batches import decode_mean
from vaepipe.models.vae import VAE

def pca_2d(x: np.ndarray, fit_on: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Project ``x`` (N, Z) on the first two principal components of ``fit_on`` (default x).

    Returns ``(coords (N, 2), explained (2,))``, ``explained`` being each component's share of
    the total variance of ``fit_on`` (what recipe 001 reports as "explained variance").
    """
    x = np.asarray(x, np.float64)
    ref = x if fit_on is None else np.asarray(fit_on, np.float64)
    mean = ref.mean(axis=0)
    _, s, vt = np.linalg.svd(ref - mean, full_matrices=False)
    var = s ** 2
    total = var.sum()
    explained = var[:2] / total if total > 0 else np.zeros(2)
    comps = vt[:2]
    # a fixed sign per component (largest loading positive): plots do not flip between runs
    comps = comps * np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])[:, None]
    coords = (x - mean) @ comps.T
    if coords.shape[1] < 2:  # a 1-D latent: second coordinate 0
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        explained = np.pad(explained, (0, 2 - len(explained)))
    return coords.astype(np.float32), explained


def tsne_2d(x: np.ndarray, seed: int, perplexity: float = 30.0, iterations: int = 500
            ) -> np.ndarray:
    """t-SNE (scikit-learn, Barnes-Hut, PCA initialisation) of ``x`` (N, Z) to (N, 2).

    Runs on one thread: the result is then the same on every machine, and several fits can run
    side by side instead (:func:`vaepipe.figures.gallery.draw_models` explains why that is faster on a
    small shared CPU). The perplexity is capped below N / 3 so that small test sets still embed.
    """
    from sklearn.manifold import TSNE  # imported here: scikit-learn takes ~1 s to import

    x = np.asarray(x, np.float32)
    perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3.0 - 1e-3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                max_iter=iterations, random_state=seed, n_jobs=1)
    with threadpool_limits(1):
        return tsne.fit_transform(x).astype(np.float32)


def posterior_samples(mu: np.ndarray, logvar: np.ndarray, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(sigma, z)`` with sigma = exp(logvar / 2) and z = mu + sigma * eps, eps ~ N(0, I)."""
    sigma = np.exp(0.5 * np.asarray(logvar, np.float64))
    eps = np.random.default_rng(seed).standard_normal(sigma.shape)
    return sigma.astype(np.float32), (np.asarray(mu, np.float64) + sigma * eps).astype(np.float32)


def pick_pair(labels: np.ndarray, seed: int) -> tuple[int, int]:
    """Two test indices of different classes, chosen with ``seed`` (interpolation endpoints);
    two different images where every label is the same (data of one class)."""
    labels = np.asarray(labels)
    if len(labels) < 2:
        raise ValueError("interpolation needs at least two test images")
    rng = np.random.default_rng(seed)
    a = int(rng.integers(len(labels)))
    other = labels != labels[a] if len(np.unique(labels)) > 1 else np.arange(len(labels)) != a
    b = int(rng.choice(np.flatnonzero(other)))
    return a, b


def interpolation_latents(z_a: np.ndarray, z_b: np.ndarray, steps: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas (steps,), z (steps, Z))`` on the straight line from ``z_a`` to ``z_b``."""
    alphas = np.linspace(0.0, 1.0, steps)
    z = (1 - alphas[:, None]) * np.asarray(z_a)[None] + alphas[:, None] * np.asarray(z_b)[None]
    return alphas, z.astype(np.float32)


def traversal_latents(z0: np.ndarray, span: float, steps: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(values (steps,), z (Z, steps, Z))``: row d is ``z0`` with dimension d set to each value.

    The values run from -span to +span in the prior's units (the prior is N(0, 1) in every
    dimension), the other dimensions stay at ``z0``, a test image's posterior mean.
    """
    z0 = np.asarray(z0, np.float32)
    values = np.linspace(-span, span, steps)
    z = np.repeat(np.repeat(z0[None, None], len(z0), 0), steps, 1)  # (Z, steps, Z)
    for d in range(len(z0)):
        z[d, :, d] = values
    return values, z


def decode_images(model: VAE, z: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Decode latents (..., Z) to mean images (..., C, H, W) in [0, 1], as a NumPy array."""
    z = np.asarray(z, np.float32)
    flat = torch.from_numpy(z.reshape(-1, z.shape[-1]))
    images = decode_mean(model, flat, batch).cpu().numpy()
    return images.reshape(*z.shape[:-1], *images.shape[1:])
