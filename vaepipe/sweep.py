"""Seed 002's beta study: its class subset, latent-evolution frames and the measures of its table.

Each beta trains the conv VAE with :func:`vaepipe.training.fit`; :class:`FrameRecorder` is
fit's ``on_batch`` hook and only stores arrays (drawing happens afterwards, in
:mod:`vaepipe.animation`). :func:`measure` computes one row of the comparison table on the
test images of the chosen classes.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import silhouette_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vaepipe.animation import Frame
from vaepipe.config import ConvConfig, SweepConfig
from vaepipe.models import VAE
from vaepipe.training import EVAL_BATCH, evaluate_elbo, to_unit_float

KIND = "conv"
PRIOR_SAMPLES = 1000  # images drawn from the prior for the diversity measure
# 3x3 four-neighbour Laplacian, the usual kernel of the "variance of the Laplacian" focus
# measure (Pech-Pacheco et al. 2000, ICPR)
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def train_config(sweep: SweepConfig) -> ConvConfig:
    """The optimisation keys ``fit`` reads, from the sweep section (seed 002: Adam, constant beta)."""
    return ConvConfig(channels=sweep.channels, latent_dim=sweep.latent_dim, epochs=sweep.epochs,
                      batch_size=sweep.batch_size, lr=sweep.lr)


def select_classes(images: np.ndarray, labels: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels whose label is in ``classes``, in their original order."""
    keep = np.isin(labels, np.asarray(classes))
    return images[keep], labels[keep]


def probe_indices(labels: np.ndarray, classes, per_class: int) -> np.ndarray:
    """A fixed probe set: the first ``per_class`` images of each class, interleaved by class.

    Interleaving (class a, b, c, a, b, c, ...) means any prefix, such as the GIF's strip of
    originals, shows every class.
    """
    per = [np.flatnonzero(labels == c)[:per_class] for c in classes]
    n = min(len(p) for p in per)
    if n == 0:
        raise ValueError(f"no test images of class {classes[[len(p) for p in per].index(0)]}")
    return np.stack([p[:n] for p in per], axis=1).reshape(-1)


def frame_steps(total_steps: int, n_frames: int) -> list[int]:
    """``n_frames`` distinct optimizer steps in ``[0, total_steps]``, denser early.

    Step ``k`` of ``n`` sits at ``total * (k / (n - 1))**2``, so half the frames fall in the
    first quarter of training, where the latent space moves most; 0 is before training and
    the last frame is the final step. Clashing early steps are pushed one step apart.
    """
    n = min(n_frames, total_steps + 1)
    if n < 2:
        return [total_steps]
    steps = [round(total_steps * (k / (n - 1)) ** 2) for k in range(n)]
    for k in range(1, n):
        steps[k] = max(steps[k], steps[k - 1] + 1)
    for k in range(n - 1, -1, -1):  # the pushes never run past the end
        steps[k] = min(steps[k], total_steps - (n - 1 - k))
    return steps


@torch.no_grad()
def encode_means(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """Posterior means (N, Z) of uint8 ``images`` (N, C, H, W), in eval mode."""
    was_training = model.training
    model.eval()
    mus = [model.encode(to_unit_float(images[i:i + EVAL_BATCH]))[0]
           for i in range(0, len(images), EVAL_BATCH)]
    model.train(was_training)
    return torch.cat(mus)


@torch.no_grad()
def reconstruct(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """Pixel means sigmoid(decode(mu)) (N, C, H, W) of uint8 ``images``: no sampling."""
    was_training = model.training
    model.eval()
    out = [torch.sigmoid(model.decode(model.encode(to_unit_float(images[i:i + EVAL_BATCH]))[0]))
           for i in range(0, len(images), EVAL_BATCH)]
    model.train(was_training)
    return torch.cat(out)


class FrameRecorder:
    """``fit``'s ``on_batch`` hook: at the chosen steps, store the probe set's latent means and
    the strip's reconstructions.

    The model is switched to eval mode for the encoding (BatchNorm uses, and does not update,
    its running statistics) and back to training mode; nothing draws random numbers, so
    recording frames leaves the trained weights exactly as they would be without it.
    """

    def __init__(self, probe: torch.Tensor, strip: torch.Tensor, steps: list[int],
                 batches_per_epoch: int):
        self.probe, self.strip = probe, strip  # uint8 (P, C, H, W), (S, C, H, W) on the device
        self.steps = set(steps)
        self.batches_per_epoch = batches_per_epoch
        self.frames: list[Frame] = []

    def capture(self, model: VAE, epoch: int, batch: int) -> None:
        mu = encode_means(model, self.probe)
        recon = reconstruct(model, self.strip)[:, 0]  # (S, H, W), first channel
        self.frames.append(Frame(epoch, batch, mu.cpu().numpy().astype(np.float32),
                                 (recon * 255).round().to(torch.uint8).cpu().numpy()))

    def start(self, model: VAE) -> None:
        """The frame before training (step 0), if it is one of the chosen steps."""
        if 0 in self.steps:
            self.capture(model, 0, 0)

    def __call__(self, epoch: int, batch: int, model: VAE) -> None:
        if (epoch - 1) * self.batches_per_epoch + batch in self.steps:
            self.capture(model, epoch, batch)


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


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean Euclidean distance between the flattened images of every distinct pair."""
    return float(torch.pdist(images.flatten(1).double()).mean())


@torch.no_grad()
def prior_samples(model: VAE, n: int, seed: int) -> torch.Tensor:
    """Pixel means (n, C, H, W) of the decoder at ``n`` draws z ~ N(0, I), seeded."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, model.latent_dim, generator=gen, device=device)
    was_training = model.training
    model.eval()
    out = torch.sigmoid(model.decode(z))
    model.train(was_training)
    return out


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (Rousseeuw 1987) of ``points`` grouped by ``labels``, Euclidean; in [-1, 1]."""
    return float(silhouette_score(np.asarray(points, dtype=np.float64), labels, metric="euclidean"))


def probe_accuracy(train_points: np.ndarray, train_labels: np.ndarray, test_points: np.ndarray,
                   test_labels: np.ndarray) -> float:
    """Test accuracy of a multinomial logistic regression fit on standardised training points."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probe.fit(np.asarray(train_points, dtype=np.float64), train_labels)
    return float(probe.score(np.asarray(test_points, dtype=np.float64), test_labels))


def measure(model: VAE, cfg: ConvConfig, beta: float, seed: int,
            train_x: torch.Tensor, train_y: np.ndarray,
            test_x: torch.Tensor, test_y: np.ndarray) -> dict[str, float]:
    """One row of the sweep table, from uint8 image tensors on the model's device.

    Everything is measured on ``test_x`` except the probe's training points (the latent means
    of ``train_x``). Loss terms use one posterior sample per image (seeded); reconstructions
    for sharpness decode the posterior mean.
    """
    elbo = evaluate_elbo(model, test_x, beta, cfg, seed=seed)
    real = to_unit_float(test_x)
    recon = reconstruct(model, test_x)
    real_sharp, recon_sharp = sharpness(real), sharpness(recon)
    gen = torch.Generator().manual_seed(seed)
    subset = torch.randperm(len(test_x), generator=gen)[:PRIOR_SAMPLES].to(test_x.device)
    test_mu = encode_means(model, test_x).cpu().numpy()
    train_mu = encode_means(model, train_x).cpu().numpy()
    return {
        "test_recon": elbo["recon"],
        "test_kl": elbo["kl"],
        "test_nelbo": elbo["nelbo"],
        "sharpness": recon_sharp,
        "sharpness_ratio": recon_sharp / real_sharp,
        "diversity": mean_pairwise_distance(prior_samples(model, PRIOR_SAMPLES, seed)),
        "silhouette": silhouette(test_mu, test_y),
        "probe_accuracy": probe_accuracy(train_mu, train_y, test_mu, test_y),
        # references: the same measures on real test images, the same for every beta
        "real_sharpness": real_sharp,
        "real_diversity": mean_pairwise_distance(real[subset]),
        "real_diversity_images": len(subset),
        "test_images": len(test_x),
        "prior_samples": PRIOR_SAMPLES,
        "probe_train_images": len(train_x),
    }
