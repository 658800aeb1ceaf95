"""Which figures the pipeline draws, from which saved arrays: the visualize stage's plan.

For each model it compares the first epoch's checkpoint with the best one, as recipe 000 does,
drawing from what ``evaluate`` saved per checkpoint (``data/evaluate/<model>/<checkpoint>.npz``:
test-set posterior means and log-variances, prior samples, reconstructions, frozen-latent
samples) and decoding only the latent walks (interpolation, traversals), which nothing saved.
Every function returns :class:`~vaepipe.figures.report.FigureEntry` records that the report lists.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
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

COMPARED = ("epoch_01", "best")   # the checkpoints recipe 000 draws side by side
# what evaluate saves per checkpoint: key -> (dtype, number of dimensions)
EVALUATION_KEYS = {"mu": ("float32", 2), "logvar": ("float32", 2), "labels": ("int64", 1),
                   "samples": ("float32", 4), "recon_index": ("int64", 1), "recon": ("float32", 4),
                   "frozen_sigmas": ("float32", 1), "frozen": ("float32", 5)}
# per checkpoint, a function returning the t-SNE embedding of the scatter plots' latent means
Embeddings = Mapping[str, Callable[[], np.ndarray]]


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
    columns, ``metrics`` the model's block of ``reports/evaluate.json`` (may be empty), and
    ``sample_sides`` the side of each square grid of its saved prior samples drawn (up to 10).
    """

    name: str
    evaluations: Mapping[str, Mapping[str, np.ndarray]]
    decoders: Mapping[str, VAE]
    epochs: Mapping[str, int]
    history: Mapping[str, np.ndarray] | None = None
    best_epoch: int | None = None
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    sample_sides: tuple[int, ...] = (4, 8)

    @property
    def title(self) -> str:
        """The model's class title ("MLP HVAE" for two levels), else the kind's."""
        best = self.decoders.get("best")
        return best.title if best is not None else model_title(self.name)

    def label(self, checkpoint: str) -> str:
        epoch = self.epochs.get(checkpoint)
        if checkpoint == "epoch_01":
            return "epoch 1"
        return f"{checkpoint} (epoch {epoch})" if epoch is not None else checkpoint


@dataclass
class FigurePlan:
    """What every figure of one model shares: the run, the test split, the params, where the
    files go. Each ``draw_*`` step below draws one figure family from it and returns its entries."""

    run: ModelRun
    test_images: np.ndarray            # uint8 (N, C, H, W)
    test_labels: np.ndarray
    class_names: Sequence[str]
    cfg: VisualizeConfig
    seed: int
    out: Path

    @cached_property
    def ev(self) -> dict[str, Mapping[str, np.ndarray]]:
        return {c: self.run.evaluations[c] for c in COMPARED}

    @cached_property
    def labels(self) -> dict[str, str]:
        return {c: self.run.label(c) for c in COMPARED}

    @property
    def versus(self) -> str:
        return f"{self.labels['epoch_01']} vs {self.labels['best']}"

    @property
    def prior_title(self) -> str:
        """How captions write the model's prior p(z)."""
        return self.run.decoders["best"].prior.title

    @cached_property
    def keep(self) -> np.ndarray:
        """The test images the PCA and t-SNE scatter plots draw."""
        return scatter_indices(len(self.test_labels), self.cfg, self.seed)

    @cached_property
    def pair(self) -> tuple[int, int]:
        """Two test images of different classes: the interpolation's ends, the traversal's start."""
        return latent.pick_pair(self.test_labels, self.seed)

    @cached_property
    def latent_use(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per checkpoint: each latent dimension's KL on the test set, and which are active."""
        return {c: (kl_per_dim(self.ev[c]["mu"], self.ev[c]["logvar"]),
                    active_units(self.ev[c]["mu"])) for c in COMPARED}

    def metric(self, key: str, fmt: str = ".1f") -> str:
        """'epoch 1 -> best' values of one evaluate metric, or '' where evaluate gave none."""
        values = [self.run.metrics.get(c, {}).get(key) for c in COMPARED]
        if any(not isinstance(v, (int, float)) for v in values):
            return ""
        return " -> ".join(format(v, fmt) for v in values)

    def path(self, name: str) -> Path:
        return self.out / f"{self.run.name}_{name}.png"

    @property
    def standard_prior(self) -> bool:
        """Whether every latent dimension of the prior is N(0, 1)."""
        return self.run.decoders["best"].prior.standard_marginals

    def entry(self, path: Path, title: str, caption: str, headline: bool = False) -> FigureEntry:
        group = self.run.title
        if self.run.decoders["best"].levels == 2:
            caption += (" Two stochastic levels: the latents shown are the top level z2, "
                        "q(z2 | x); images decode z2 through the mean of p(z1 | z2).")
        return FigureEntry(path, group, f"{group}: {title}" if headline else title, caption,
                           headline)


def draw_reconstructions(plan: FigurePlan) -> FigureEntry:
    """Test inputs over each checkpoint's reconstructions of them, as ``evaluate`` saved them."""
    ev, labels = plan.ev, plan.labels
    test_float = plan.test_images.astype(np.float32) / 255.0
    idx = [ev[c]["recon_index"] for c in COMPARED]
    path = plan.path("reconstructions")
    if all(np.array_equal(idx[0], i) for i in idx):
        rows = {"test input": test_float[idx[0]], **{labels[c]: ev[c]["recon"] for c in COMPARED}}
    else:  # evaluate chose different images per checkpoint: each gets its own input row
        rows = {}
        for c, i in zip(COMPARED, idx):
            rows[f"input ({labels[c]})"] = test_float[i]
            rows[labels[c]] = ev[c]["recon"]
    grids.reconstructions(rows, path, f"{plan.run.title}: test images and their reconstructions")
    recon = plan.metric("recon")
    return plan.entry(path, "Reconstructions",
                      f"Top row: {len(idx[0])} test images; below, each checkpoint's "
                      f"reconstruction of them as `evaluate` saved it, {plan.versus}"
                      + (f"; test reconstruction term {recon} nats per image." if recon
                         else "."), headline=True)


def draw_prior_samples(plan: FigurePlan) -> list[FigureEntry]:
    """One grid of ``evaluate``'s decoded prior samples per side in ``run.sample_sides``."""
    samples = {plan.labels[c]: plan.ev[c]["samples"] for c in COMPARED}
    fid = plan.metric("fid")
    fid_text = f" FID {fid} (classifier features)." if fid else ""
    drawn = []
    for side in plan.run.sample_sides:
        path = plan.path(f"samples_{side}x{side}")
        grids.sample_grids(samples, side, path, f"{plan.run.title}: decoded prior samples "
                           f"z ~ {plan.prior_title}, {side}x{side}")
        note = " (recipe 004's 10x10 grid)" if side == 10 else ""
        drawn.append(plan.entry(path, f"Prior samples {side}x{side}",
                                f"{side * side} images decoded from z ~ {plan.prior_title}{note}, "
                                f"{plan.versus}." + fid_text, headline=side == 8))
    return drawn


def draw_latent_pca(plan: FigurePlan) -> FigureEntry:
    """PCA (fit on all test means) of the latent means of the scatter subsample, by class."""
    ev, labels, keep, n_test = plan.ev, plan.labels, plan.keep, len(plan.test_labels)
    panels, shares = {}, {}
    for c in COMPARED:
        coords, explained = latent.pca_2d(ev[c]["mu"][keep], fit_on=ev[c]["mu"])
        shares[c] = explained
        panels[f"{labels[c]}: PC 1 + PC 2 explain {100 * explained.sum():.1f}% of the "
               f"variance ({100 * explained[0]:.1f}% + {100 * explained[1]:.1f}%)"] = coords
    path = plan.path("latent_pca")
    plots.latent_scatter(panels, plan.test_labels[keep], plan.class_names, path,
                         f"{plan.run.title}: PCA of the test latent means ({len(keep)} of "
                         f"{n_test} images, z{ev['best']['mu'].shape[1]})", "PC")
    share = " -> ".join(f"{100 * shares[c].sum():.1f}%" for c in COMPARED)
    probe = plan.metric("probe_accuracy", ".3f")
    return plan.entry(path, "Latent space, PCA",
                      f"Test latent means projected on their first two principal components, "
                      f"coloured by class; explained variance {share}"
                      + (f"; linear-probe accuracy {probe}." if probe else "."))


def draw_latent_tsne(plan: FigurePlan, tsne: Embeddings | None) -> FigureEntry:
    """t-SNE of the same subsample as the PCA; ``tsne`` as :func:`draw_model` takes it."""
    ev, cfg, keep = plan.ev, plan.cfg, plan.keep
    if tsne is None:
        tsne = {c: (lambda c=c: latent.tsne_2d(ev[c]["mu"][keep], plan.seed, cfg.tsne_perplexity,
                                               cfg.tsne_iterations)) for c in COMPARED}
    path = plan.path("latent_tsne")
    plots.latent_scatter({plan.labels[c]: tsne[c]() for c in COMPARED}, plan.test_labels[keep],
                         plan.class_names, path, f"{plan.run.title}: t-SNE of the test latent "
                         f"means ({len(keep)} images, perplexity {cfg.tsne_perplexity:g})",
                         "t-SNE")
    sil = plan.metric("silhouette", ".3f")
    return plan.entry(path, "Latent space, t-SNE",
                      f"t-SNE of the same {len(keep)} latent means: neighbourhoods kept, "
                      f"distances between clusters not"
                      + (f"; silhouette of the means by class {sil}." if sil else "."))


def draw_latent_walks(plan: FigurePlan) -> list[FigureEntry]:
    """Decoded walks from the latent means of two test images of different classes: the straight
    line between them, then each dimension in turn around the first."""
    (a, b), cfg, title = plan.pair, plan.cfg, plan.run.title
    names = [plan.class_names[plan.test_labels[i]] for i in (a, b)]
    rows = {}
    for c in COMPARED:
        alphas, z = latent.interpolation_latents(plan.ev[c]["mu"][a], plan.ev[c]["mu"][b],
                                                 cfg.interpolation_steps)
        rows[plan.labels[c]] = latent.decode_images(plan.run.decoders[c], z)
    between = plan.path("interpolation")
    grids.interpolation(rows, alphas, between, f"{title}: interpolation from "
                        f"{figure_text(names[0])} (test #{a}) to {figure_text(names[1])} "
                        f"(test #{b}), alpha 0 to 1")
    walks, row_labels = {}, {}
    for c in COMPARED:
        values, z = latent.traversal_latents(plan.ev[c]["mu"][a], cfg.traversal_span,
                                             cfg.traversal_steps)
        walks[plan.labels[c]] = latent.decode_images(plan.run.decoders[c], z)
        row_labels[plan.labels[c]] = [f"z{d} KL {k:.2f}{'' if on else ' (off)'}"
                                      for d, (k, on) in enumerate(zip(*plan.latent_use[c]))]
    around = plan.path("traversal")
    grids.traversals(walks, values, row_labels, around, f"{title}: latent traversals around the "
                     f"mean of test #{a} ({figure_text(names[0])}), one row per dimension")
    return [plan.entry(between, "Interpolation",
                       f"Decoded (1 - alpha) mu_a + alpha mu_b in {cfg.interpolation_steps} "
                       f"steps between the latent means of a {markdown_text(names[0])} and a "
                       f"{markdown_text(names[1])}."),
            plan.entry(around, "Latent traversals",
                       f"Row d: the latent mean of test image #{a} with dimension d set to "
                       f"{cfg.traversal_steps} values from -{cfg.traversal_span:g} to "
                       f"+{cfg.traversal_span:g}; labels give each dimension's KL, '(off)' "
                       f"marks inactive ones, whose rows do not change.")]


def draw_kl_per_dim(plan: FigurePlan) -> FigureEntry:
    """KL per latent dimension on the test set, active units marked."""
    path = plan.path("kl_per_dim")
    plots.kl_per_dimension({plan.labels[c]: plan.latent_use[c] for c in COMPARED}, path,
                           f"{plan.run.title}: KL per latent dimension on the test set",
                           ACTIVE_THRESHOLD)
    z_dim = plan.ev["best"]["mu"].shape[1]
    counts = " -> ".join(f"{int(plan.latent_use[c][1].sum())}/{z_dim}" for c in COMPARED)
    against = "" if plan.standard_prior else (
        f" Measured against N(0, 1), not the model's {plan.prior_title}: a mixture prior has "
        f"no KL per dimension (the model's whole KL is in the evaluation), so this shows how "
        f"far each dimension's posterior is from a unit Gaussian; active units depend on the "
        f"encoder only.")
    return plan.entry(path, "KL per latent dimension",
                      f"Mean KL(q(z_u|x) || N(0, 1)) of each dimension over the test set; "
                      f"active units (Var_x(mu_u) > {ACTIVE_THRESHOLD:g}) {counts}.{against}")


def draw_posterior(plan: FigurePlan) -> FigureEntry:
    """Histograms of the encoder's mu, sigma and a sampled z beside the prior (recipe 004)."""
    panels = {}
    for c in COMPARED:
        sigma, z = latent.posterior_samples(plan.ev[c]["mu"], plan.ev[c]["logvar"], plan.seed)
        panels[plan.labels[c]] = (plan.ev[c]["mu"], sigma, z, plan.latent_use[c][1])
    best = plan.run.decoders["best"]
    prior = best.prior.pooled_draws(20_000, plan.seed, best.encode)
    path = plan.path("posterior")
    plots.posterior_histograms(panels, prior, path, f"{plan.run.title}: encoder outputs over "
                               "the test set and the prior", plan.prior_title)
    beside = ("the N(0, 1) prior; inactive dimensions sit at mu = 0, sigma = 1" if
              plan.standard_prior else
              f"draws of the model's {plan.prior_title} pooled over its dimensions, and the "
              f"N(0, 1) density for reference")
    return plan.entry(path, "Posterior at a glance",
                      "Histograms over all test images and latent dimensions of the encoder's "
                      f"mu, sigma and one reparameterized sample z = mu + sigma * eps, beside "
                      f"{beside}.")


def draw_frozen_latents(plan: FigurePlan) -> FigureEntry:
    """Recipe 002's section 9 on the best checkpoint: samples with mu = 0 and a fixed sigma."""
    best = plan.ev["best"]
    path = plan.path("frozen_latents")
    grids.frozen_latents(best["frozen"], best["frozen_sigmas"].tolist(), path,
                         f"{plan.run.title}, {plan.labels['best']}: samples with the latent "
                         f"frozen at mu = 0 and a fixed sigma", prior_title=plan.prior_title)
    return plan.entry(path, "Frozen latent parameters",
                      f"Recipe 002's experiment on the best checkpoint: z ~ {plan.prior_title} "
                      "beside "
                      "z = sigma * eps with sigma in "
                      f"{{{', '.join(f'{s:g}' for s in best['frozen_sigmas'])}}}; small sigma "
                      "gives near-identical images, large sigma diverse ones.")


def draw_loss_curves(plan: FigurePlan) -> list[FigureEntry]:
    """The training history's losses per epoch with the KL weight; none without a history."""
    if plan.run.history is None:
        return []
    path = plan.path("loss_curves")
    plots.loss_curves(plan.run.history, path, f"{plan.run.title}: loss per epoch (train: the "
                      "epoch's KL weight; validation: the target weight)", plan.run.best_epoch)
    return [plan.entry(path, "Loss curves",
                       "Total, reconstruction and KL per epoch on the training and validation "
                       "sets; the dashed grey line (right axis) is the KL weight, so a warm-up "
                       "shows as a ramp.")]


def draw_model(run: ModelRun, test_images: np.ndarray, test_labels: np.ndarray,
               class_names: Sequence[str], cfg: VisualizeConfig, seed: int,
               out_dir: str | Path, tsne: Embeddings | None = None) -> list[FigureEntry]:
    """Every per-model figure, epoch 1 beside best; returns what was drawn, in report order.

    ``test_images`` are the test split's uint8 images (N, C, H, W), ``test_labels`` its labels.
    ``tsne`` may give, per checkpoint, a function returning the t-SNE embedding of the latent
    means at :func:`scatter_indices` (e.g. a running future's ``result``); by default they are
    computed here. The t-SNE figure is drawn last, so such work can overlap the others.
    """
    plan = FigurePlan(run, test_images, test_labels, class_names, cfg, seed, Path(out_dir))
    drawn = [draw_reconstructions(plan), *draw_prior_samples(plan), draw_latent_pca(plan)]
    tsne_at = len(drawn)
    drawn += [*draw_latent_walks(plan), draw_kl_per_dim(plan), draw_posterior(plan),
              draw_frozen_latents(plan), *draw_loss_curves(plan)]
    drawn.insert(tsne_at, draw_latent_tsne(plan, tsne))
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
