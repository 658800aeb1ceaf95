"""Recipe 002's beta study: its class subset, its training recipe and the measures of its table.

Each beta trains the conv VAE with :func:`vaepipe.train.loop.fit` (recording frames with
:mod:`vaepipe.sweep.frames`); :func:`measure` computes one row of the comparison table on the
test images of the chosen classes, with the evaluation's measures
(:mod:`vaepipe.evaluate.measures`) where the two compute the same thing.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vaepipe.config import ConvConfig, SweepConfig
from vaepipe.evaluate.measures import diversity, probe_accuracy, silhouette
from vaepipe.models.batches import EVAL_BATCH, decode_mean, encode, reconstruct, to_unit_float
from vaepipe.models.vae import VAE
from vaepipe.train.objective import evaluate_elbo

KIND = "conv"
PRIOR_SAMPLES = 1000  # images drawn from the prior for the diversity measure
# 3x3 four-neighbour Laplacian, the usual kernel of the "variance of the Laplacian" focus
# measure (Pech-Pacheco et al. 2000, ICPR)
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def train_config(sweep: SweepConfig) -> ConvConfig:
    """The optimisation keys ``fit`` reads, from the sweep section (recipe 002: Adam,
    constant beta)."""
    return ConvConfig(channels=sweep.channels, latent_dim=sweep.latent_dim, epochs=sweep.epochs,
                      batch_size=sweep.batch_size, lr=sweep.lr)


def select_classes(images: np.ndarray, labels: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels whose label is in ``classes``, in their original order."""
    keep = np.isin(labels, np.asarray(classes))
    return images[keep], labels[keep]


# --------------------------------------------------------------------------------------------
# Measures of the comparison table


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """Per-image variance of the 3x3 Laplacian of float images (N, C, H, W) in [0, 1]: (N,).

    Computed over the valid (H-2, W-2) interior, so the image border adds no edge of its own;
    channels are averaged first.
    """
    grey = images.float().mean(dim=1, keepdim=True)
    lap = F.conv2d(grey, LAPLACIAN.to(grey.device).view(1, 1, 3, 3))  # (N, 1, H-2, W-2)
    return lap.flatten(1).var(dim=1, correction=0)  # population variance, as OpenCV users take it


def sharpness(images: torch.Tensor) -> float:
    """Mean over images of :func:`laplacian_variance`: blur lowers it, edges and noise raise it."""
    return float(laplacian_variance(images).mean())


def measure(model: VAE, beta: float, seed: int,
            train_x: torch.Tensor, train_y: np.ndarray,
            test_x: torch.Tensor, test_y: np.ndarray) -> dict[str, float]:
    """One row of the sweep table, from uint8 image tensors on the model's device.

    Everything is measured on ``test_x`` except the probe's training points (the latent means
    of ``train_x``). Loss terms use one posterior sample per image (seeded); reconstructions
    for sharpness decode the posterior mean.
    """
    elbo = evaluate_elbo(model, test_x, beta, seed=seed)
    real = to_unit_float(test_x)
    recon = reconstruct(model, test_x, EVAL_BATCH)
    real_sharp, recon_sharp = sharpness(real), sharpness(recon)
    gen = torch.Generator().manual_seed(seed)
    subset = torch.randperm(len(test_x), generator=gen)[:PRIOR_SAMPLES].to(test_x.device)
    test_mu = encode(model, test_x, EVAL_BATCH)[0].cpu().numpy()
    train_mu = encode(model, train_x, EVAL_BATCH)[0].cpu().numpy()
    z = model.sample_prior(PRIOR_SAMPLES, torch.Generator(device=test_x.device).manual_seed(seed))
    return {
        "test_recon": elbo["recon"],
        "test_kl": elbo["kl"],
        "test_nelbo": elbo["nelbo"],
        "sharpness": recon_sharp,
        "sharpness_ratio": recon_sharp / real_sharp,
        "diversity": diversity(decode_mean(model, z, EVAL_BATCH)),
        # silhouette and probe compare classes: none with one class (sweep.classes: auto)
        **({"silhouette": silhouette(test_mu, test_y),
            "probe_accuracy": probe_accuracy(train_mu, train_y, test_mu, test_y)}
           if len(np.unique(test_y)) > 1 else {}),
        # references: the same measures on real test images, the same for every beta
        "real_sharpness": real_sharp,
        "real_diversity": diversity(real[subset]),
        "real_diversity_images": len(subset),
        "test_images": len(test_x),
        "prior_samples": PRIOR_SAMPLES,
        "pixel_values": int(np.prod(test_x.shape[1:])),  # C x H x W, the diversity's dimensions
        "probe_train_images": len(train_x),
    }
