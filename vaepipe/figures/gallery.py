"""Which figures the pipeline draws, from which saved arrays: the visualize stage's plan.

For each model it compares the first epoch's checkpoint with the best one, as seed 000 does,
drawing from what ``evaluate`` saved per checkpoint (``data/evaluate/<model>/<checkpoint>.npz``:
test-set posterior means and log-variances, prior samples, reconstructions, frozen-latent
samples) and decoding only the latent walks (interpolation, traversals), which nothing saved.
Every function returns :class:`~vaepipe.figures.report.FigureEntry` records that the report lists.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from vaepipe.config import VisualizeConfig
from vaepipe.data.names import figure_text, markdown_text
from vaepipe.evaluate.measures import ACTIVE_THRESHOLD, active_units, kl_per_dim, subsample
from vaepipe.figures import grids, latent, plots
from vaepipe.figures.report import FigureEntry
from vaepipe.io import read_npz
from vaepipe.models.vae import VAE, model_title

COMPARED = ("epoch_01", "best")   # the checkpoints seed 000 draws side by side
# what evaluate saves per checkpoint: key -> (dtype, number of dimensions)
EVALUATION_KEYS = {"mu": ("float32", 2), "logvar": ("float32", 2), "labels": ("int64", 1),
                   "samples": ("float32", 4), "recon_index": ("int64", 1),
                   "recon": ("float32", 4), "frozen_sigmas": ("float32", 1),
                   "frozen": ("float32", 5)}


class InputError(ValueError):
    """An input file that does not hold what the visualize stage expects; names the file."""


def load_evaluation(path: str | Path, test_labels: np.ndarray) -> dict[str, np.ndarray]:
    """Read one ``evaluate`` output and check it against the contract and the test split."""
    path = Path(path)
    arrays = read_npz(path, "run `dvc repro evaluate` first", InputError)
    missing = sorted(set(EVALUATION_KEYS) - set(arrays))
    if missing:
        raise InputError(f"{path}: missing arrays {', '.join(missing)}")
    for key, (dtype, ndim) in EVALUATION_KEYS.items():
        a = arrays[key]
        if a.dtype != np.dtype(dtype) or a.ndim != ndim:
            raise InputError(f"{path}: '{key}' must be {dtype} with {ndim} dimensions, got "
                             f"{a.dtype} {a.shape}")
    if arrays["mu"].shape != arrays["logvar"].shape:
        raise InputError(f"{path}: mu {arrays['mu'].shape} and logvar "
                         f"{arrays['logvar'].shape} differ in shape")
    if not np.array_equal(arrays["labels"], test_labels):
        raise InputError(f"{path}: 'labels' are not the test split's labels in order "
                         f"({len(arrays['labels'])} vs {len(test_labels)} images)")
    if len(arrays["frozen"]) != len(arrays["frozen_sigmas"]) + 1:
        raise InputError(f"{path}: 'frozen' must hold the baseline and one set per sigma, got "
                         f"{len(arrays['frozen'])} sets for {len(arrays['frozen_sigmas'])} sigmas")
    return arrays


@dataclass
class ModelRun:
    """What one model's figures are drawn from.

    ``evaluations`` and ``decoders`` are keyed by checkpoint name (:data:`COMPARED`),
    ``epochs`` gives each checkpoint's training epoch, ``history`` the training history's
    columns, ``metrics`` the model's block of ``reports/evaluate.json`` (may be empty).
    """

    name: str
    evaluations: Mapping[str, Mapping[str, np.ndarray]]
    decoders: Mapping[str, VAE]
    epochs: Mapping[str, int]
    history: Mapping[str, np.ndarray] | None = None
    best_epoch: int | None = None
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return model_title(self.name)

    def label(self, checkpoint: str) -> str:
        epoch = self.epochs.get(checkpoint)
        if checkpoint == "epoch_01":
            return "epoch 1"
        return f"{checkpoint} (epoch {epoch})" if epoch is not None else checkpoint


def _metric(run: ModelRun, key: str, fmt: str = ".1f") -> str:
    """'epoch 1 -> best' values of one evaluate metric, or '' when evaluate did not report it."""
    values = [run.metrics.get(c, {}).get(key) for c in COMPARED]
    if any(not isinstance(v, (int, float)) for v in values):
        return ""
    return " -> ".join(format(v, fmt) for v in values)


def _entry(path: Path, group: str, title: str, caption: str, headline: bool = False
           ) -> FigureEntry:
    return FigureEntry(path=path, group=group, title=f"{group}: {title}" if headline else title,
                       caption=caption, headline=headline)


def draw_model(run: ModelRun, test_images: np.ndarray, test_labels: np.ndarray,
               class_names: Sequence[str], cfg: VisualizeConfig, seed: int,
               out_dir: str | Path,
               tsne: Mapping[str, Callable[[], np.ndarray]] | None = None) -> list[FigureEntry]:
    """Every per-model figure, epoch 1 beside best; returns what was drawn, in report order.

    ``test_images`` are the test split's uint8 images (N, C, H, W), ``test_labels`` its labels.
    ``tsne`` may give, per checkpoint, a function returning the t-SNE embedding of the latent
    means at :func:`scatter_indices` (e.g. a running future's ``result``); by default they are
    computed here. The t-SNE figure is drawn last, so such work can overlap the others.
    """
    out = Path(out_dir)
    m, title, group = run.name, run.title, run.title
    ev = {c: run.evaluations[c] for c in COMPARED}
    labels = {c: run.label(c) for c in COMPARED}
    test_float = test_images.astype(np.float32) / 255.0
    drawn: list[FigureEntry] = []
    versus = f"{labels['epoch_01']} vs {labels['best']}"

    # -- reconstructions: inputs over each checkpoint's reconstructions
    idx = [ev[c]["recon_index"] for c in COMPARED]
    path = out / f"{m}_reconstructions.png"
    if all(np.array_equal(idx[0], i) for i in idx):
        rows = {"test input": test_float[idx[0]], **{labels[c]: ev[c]["recon"] for c in COMPARED}}
    else:  # evaluate chose different images per checkpoint: each gets its own input row
        rows = {}
        for c, i in zip(COMPARED, idx):
            rows[f"input ({labels[c]})"] = test_float[i]
            rows[labels[c]] = ev[c]["recon"]
    grids.reconstructions(rows, path, f"{title}: test images and their reconstructions")
    recon = _metric(run, "recon")
    drawn.append(_entry(path, group, "Reconstructions",
                        f"Top row: {len(idx[0])} test images; below, each checkpoint's "
                        f"reconstruction of them as `evaluate` saved it, {versus}"
                        + (f"; test reconstruction term {recon} nats per image." if recon
                           else "."), headline=True))

    # -- prior samples
    samples = {labels[c]: ev[c]["samples"] for c in COMPARED}
    fid = _metric(run, "fid")
    fid_text = f" FID {fid} (classifier features)." if fid else ""
    sides = (4, 8, 10) if m == "mlp" else (4, 8)
    for side in sides:
        path = out / f"{m}_samples_{side}x{side}.png"
        grids.sample_grids(samples, side, path,
                             f"{title}: decoded prior samples z ~ N(0, I), {side}x{side}")
        note = " (seed 004's 10x10 grid)" if side == 10 else ""
        drawn.append(_entry(path, group, f"Prior samples {side}x{side}",
                            f"{side * side} images decoded from z ~ N(0, I){note}, {versus}."
                            + fid_text, headline=side == 8))

    # -- latent scatter: PCA (fit on all test means) of a subsample; t-SNE of it at the end
    n_test = len(test_labels)
    keep = scatter_indices(n_test, cfg, seed)
    pca_panels, shares = {}, {}
    for c in COMPARED:
        coords, explained = latent.pca_2d(ev[c]["mu"][keep], fit_on=ev[c]["mu"])
        shares[c] = explained
        pca_panels[f"{labels[c]}: PC 1 + PC 2 explain {100 * explained.sum():.1f}% of the "
                   f"variance ({100 * explained[0]:.1f}% + {100 * explained[1]:.1f}%)"] = coords
    z_dim = ev["best"]["mu"].shape[1]
    path = out / f"{m}_latent_pca.png"
    plots.latent_scatter(pca_panels, test_labels[keep], class_names, path,
                           f"{title}: PCA of the test latent means ({len(keep)} of {n_test} "
                           f"images, z{z_dim})", "PC")
    share = " -> ".join(f"{100 * shares[c].sum():.1f}%" for c in COMPARED)
    probe = _metric(run, "probe_accuracy", ".3f")
    drawn.append(_entry(path, group, "Latent space, PCA",
                        f"Test latent means projected on their first two principal components, "
                        f"coloured by class; explained variance {share}"
                        + (f"; linear-probe accuracy {probe}." if probe else ".")))
    tsne_at = len(drawn)

    # -- interpolation between two test images of different classes
    a, b = latent.pick_pair(test_labels, seed)
    rows = {}
    for c in COMPARED:
        alphas, z = latent.interpolation_latents(ev[c]["mu"][a], ev[c]["mu"][b],
                                                 cfg.interpolation_steps)
        rows[labels[c]] = latent.decode_images(run.decoders[c], z)
    pair = (class_names[test_labels[a]], class_names[test_labels[b]])
    names, shown = [figure_text(n) for n in pair], [markdown_text(n) for n in pair]
    path = out / f"{m}_interpolation.png"
    grids.interpolation(rows, alphas, path, f"{title}: interpolation from {names[0]} "
                          f"(test #{a}) to {names[1]} (test #{b}), alpha 0 to 1")
    drawn.append(_entry(path, group, "Interpolation",
                        f"Decoded (1 - alpha) mu_a + alpha mu_b in {cfg.interpolation_steps} "
                        f"steps between the latent means of a {shown[0]} and a {shown[1]}."))

    # -- traversals around the first endpoint's mean
    walks, row_labels = {}, {}
    kls = {c: kl_per_dim(ev[c]["mu"], ev[c]["logvar"]) for c in COMPARED}
    actives = {c: active_units(ev[c]["mu"]) for c in COMPARED}
    for c in COMPARED:
        values, z = latent.traversal_latents(ev[c]["mu"][a], cfg.traversal_span,
                                             cfg.traversal_steps)
        walks[labels[c]] = latent.decode_images(run.decoders[c], z)
        row_labels[labels[c]] = [f"z{d} KL {k:.2f}{'' if on else ' (off)'}"
                                 for d, (k, on) in enumerate(zip(kls[c], actives[c]))]
    path = out / f"{m}_traversal.png"
    grids.traversals(walks, values, row_labels, path,
                       f"{title}: latent traversals around the mean of test #{a} "
                       f"({names[0]}), one row per dimension")
    drawn.append(_entry(path, group, "Latent traversals",
                        f"Row d: the latent mean of test image #{a} with dimension d set to "
                        f"{cfg.traversal_steps} values from -{cfg.traversal_span:g} to "
                        f"+{cfg.traversal_span:g}; labels give each dimension's KL, '(off)' "
                        f"marks inactive ones, whose rows do not change."))

    # -- KL per dimension, active units marked
    path = out / f"{m}_kl_per_dim.png"
    plots.kl_per_dimension({labels[c]: (kls[c], actives[c]) for c in COMPARED}, path,
                             f"{title}: KL per latent dimension on the test set",
                             ACTIVE_THRESHOLD)
    counts = " -> ".join(f"{int(actives[c].sum())}/{z_dim}" for c in COMPARED)
    drawn.append(_entry(path, group, "KL per latent dimension",
                        f"Mean KL(q(z_u|x) || N(0, 1)) of each dimension over the test set; "
                        f"active units (Var_x(mu_u) > {ACTIVE_THRESHOLD:g}) {counts}."))

    # -- the posterior at a glance (seed 004)
    panels = {}
    for c in COMPARED:
        sigma, z = latent.posterior_samples(ev[c]["mu"], ev[c]["logvar"], seed)
        panels[labels[c]] = (ev[c]["mu"], sigma, z, actives[c])
    prior = np.random.default_rng(seed).standard_normal(20_000)
    path = out / f"{m}_posterior.png"
    plots.posterior_histograms(panels, prior, path,
                                 f"{title}: encoder outputs over the test set and the prior")
    drawn.append(_entry(path, group, "Posterior at a glance",
                        "Histograms over all test images and latent dimensions of the encoder's "
                        "mu, sigma and one reparameterized sample z = mu + sigma * eps, beside "
                        "the N(0, 1) prior; inactive dimensions sit at mu = 0, sigma = 1."))

    # -- frozen latents (seed 002, section 9), best checkpoint
    best = ev["best"]
    path = out / f"{m}_frozen_latents.png"
    grids.frozen_latents(best["frozen"], best["frozen_sigmas"].tolist(), path,
                           f"{title}, {labels['best']}: samples with the latent frozen at "
                           f"mu = 0 and a fixed sigma")
    drawn.append(_entry(path, group, "Frozen latent parameters",
                        "Seed 002's experiment on the best checkpoint: z ~ N(0, I) beside "
                        "z = sigma * eps with sigma in "
                        f"{{{', '.join(f'{s:g}' for s in best['frozen_sigmas'])}}}; small sigma "
                        "gives near-identical images, large sigma diverse ones."))

    # -- loss curves
    if run.history is not None:
        path = out / f"{m}_loss_curves.png"
        plots.loss_curves(run.history, path, f"{title}: loss per epoch (train: the epoch's "
                            "KL weight; validation: the target weight)", run.best_epoch)
        drawn.append(_entry(path, group, "Loss curves",
                            "Total, reconstruction and KL per epoch on the training and "
                            "validation sets; the dashed grey line (right axis) is the KL "
                            "weight, so a warm-up shows as a ramp."))
    # -- t-SNE of the same subsample, drawn last (see the docstring)
    if tsne is None:
        tsne = {c: (lambda c=c: latent.tsne_2d(ev[c]["mu"][keep], seed, cfg.tsne_perplexity,
                                               cfg.tsne_iterations)) for c in COMPARED}
    path = out / f"{m}_latent_tsne.png"
    plots.latent_scatter({labels[c]: tsne[c]() for c in COMPARED}, test_labels[keep],
                           class_names, path, f"{title}: t-SNE of the test latent means "
                           f"({len(keep)} images, perplexity {cfg.tsne_perplexity:g})", "t-SNE")
    sil = _metric(run, "silhouette", ".3f")
    drawn.insert(tsne_at, _entry(
        path, group, "Latent space, t-SNE",
        f"t-SNE of the same {len(keep)} latent means: neighbourhoods kept, distances between "
        f"clusters not" + (f"; silhouette of the means by class {sil}." if sil else ".")))
    return drawn


def scatter_indices(n_test: int, cfg: VisualizeConfig, seed: int) -> np.ndarray:
    """The test images whose latent means the PCA and t-SNE scatter plots draw."""
    return subsample(n_test, cfg.scatter_points, seed)


def draw_models(runs: Sequence[ModelRun], test_images: np.ndarray, test_labels: np.ndarray,
                class_names: Sequence[str], cfg: VisualizeConfig, seed: int,
                out_dir: str | Path, workers: int | None = None) -> list[FigureEntry]:
    """:func:`draw_model` for each run, the t-SNE fits running in ``workers`` threads meanwhile.

    ``workers`` defaults to the number of CPU cores, at most one per fit.

    scikit-learn's Barnes-Hut t-SNE is OpenMP-parallel inside one fit; on a 2-core machine
    shared with other work its thread barriers made one fit slower than a single thread
    (bench/README.md). So each fit gets one OpenMP thread, and the four fits
    (two models, two checkpoints) run side by side in threads (the gradient releases the GIL)
    while the other figures are drawn. One thread per fit also keeps the result bit-identical
    whatever the machine's core count.
    """
    keep = scatter_indices(len(test_labels), cfg, seed)
    entries: list[FigureEntry] = []
    workers = workers or max(1, min(len(runs) * len(COMPARED), os.cpu_count() or 1))
    with threadpool_limits(1), ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {(run.name, c): pool.submit(latent.tsne_2d, run.evaluations[c]["mu"][keep],
                                              seed, cfg.tsne_perplexity, cfg.tsne_iterations)
                   for run in runs for c in COMPARED}
        for run in runs:
            entries += draw_model(run, test_images, test_labels, class_names, cfg, seed, out_dir,
                                  tsne={c: futures[(run.name, c)].result for c in COMPARED})
    return entries


def draw_overview(histories: Mapping[str, Mapping[str, np.ndarray]], train_images: np.ndarray,
                  train_labels: np.ndarray, class_names: Sequence[str], dataset: str,
                  out_dir: str | Path) -> list[FigureEntry]:
    """Figures about the data and both models together: training images, validation NELBO."""
    out = Path(out_dir)
    drawn = []
    path = out / "training_images.png"
    grids.class_examples(train_images.astype(np.float32) / 255.0, train_labels, class_names,
                           path, f"{figure_text(dataset)}: training images, one row per class")
    drawn.append(_entry(path, "Data and training", "Training images",
                        "Eight training images of each class with the class name "
                        "(seed 002's sanity check of the loaded data)."))
    if histories:
        path = out / "val_nelbo.png"
        plots.validation_nelbo(
            {model_title(m): (h["epoch"], h["val_nelbo"]) for m, h in histories.items()},
            path, "Validation NELBO per epoch")
        drawn.append(_entry(path, "Data and training", "Validation NELBO",
                            "Validation NELBO (KL weight 1) of both models per epoch."))
    return drawn
