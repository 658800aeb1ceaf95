"""The recipes' plots: latent scatter, loss curves, KL per dimension, posterior histograms.

Drawn like the grids of :mod:`vaepipe.figures.grids` (arrays in, one PNG out, the Agg canvas,
no pyplot), laid out with fixed margins in pixels rather than matplotlib's constrained layout,
which measured every tick label of every axes again on each draw and cost more than the
drawing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from vaepipe.data.names import figure_text
from vaepipe.figures.grids import (CLASS_COLORS, PANEL_TITLE_PT, TITLE_PT, TITLE_PX, new_figure,
                                   save_png)


def _plot_axes(fig: Figure, nrows: int, ncols: int, left: int, right: int, top: int,
               bottom: int, wspace: float = 0.25, hspace: float = 0.35, **kwargs) -> np.ndarray:
    """A (nrows, ncols) array of axes inside margins given in pixels."""
    w, h = fig.bbox.width, fig.bbox.height
    return fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={
        "left": left / w, "right": 1 - right / w, "top": 1 - top / h, "bottom": bottom / h,
        "wspace": wspace, "hspace": hspace}, **kwargs)


def _title(fig: Figure, title: str) -> None:
    fig.text(0.5, 1 - (TITLE_PX / 2) / fig.bbox.height, title, ha="center", va="center",
             fontsize=TITLE_PT, weight="bold")


SCATTER_SIZE_PX = (1300, 620)


def latent_scatter(panels: Mapping[str, np.ndarray], labels: np.ndarray,
                   class_names: Sequence[str], path: str | Path, title: str,
                   axis_name: str) -> Path:
    """2-D embeddings of latent means, one panel per checkpoint, coloured by class.

    ``panels`` maps a panel title to (N, 2) coordinates of the same N points; ``axis_name``
    names the axes (``PC`` gives "PC 1" / "PC 2").
    """
    fig = new_figure(*SCATTER_SIZE_PX)
    axes = _plot_axes(fig, 1, len(panels), left=60, right=170, top=TITLE_PX + 30, bottom=50,
                      wspace=0.18)[0]
    labels = np.asarray(labels)
    for ax, (name, xy) in zip(axes, panels.items()):
        for c, cname in enumerate(class_names):
            sel = labels == c
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=4, color=CLASS_COLORS[c % 10],
                           label=f"{c}: {figure_text(cname)}", alpha=0.8, linewidths=0)
        ax.set_title(name, fontsize=PANEL_TITLE_PT)
        ax.set_xlabel(f"{axis_name} 1")
        ax.set_ylabel(f"{axis_name} 2")
        ax.tick_params(labelsize=8)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", markerscale=3, fontsize=9,
               title="class", frameon=False, bbox_to_anchor=(1.0, 0.5))
    _title(fig, title)
    return save_png(fig, path)


CURVES_SIZE_PX = (1500, 470)


def loss_curves(history: Mapping[str, np.ndarray], path: str | Path, title: str,
                best_epoch: int | None = None) -> Path:
    """Total, reconstruction and KL per epoch, train and validation, KL weight on a twin axis.

    ``history`` holds the training history's columns (``epoch``, ``beta`` (the epoch's KL
    weight), ``train_loss``, ``val_loss``, ``train_recon``, ``val_recon``, ``train_kl``,
    ``val_kl``, ``val_nelbo``).
    """
    fig = new_figure(*CURVES_SIZE_PX)
    axes = _plot_axes(fig, 1, 3, left=70, right=60, top=TITLE_PX + 30, bottom=85,
                      wspace=0.42)[0]
    epoch = np.asarray(history["epoch"])
    panels = (("total loss", "train_loss", "val_loss"), ("reconstruction", "train_recon",
              "val_recon"), ("KL divergence", "train_kl", "val_kl"))
    twins = []
    for ax, (name, tr, va) in zip(axes, panels):
        ax.plot(epoch, history[tr], marker=".", label="train", color="#1f77b4")
        ax.plot(epoch, history[va], marker=".", label="validation", color="#ff7f0e")
        if name == "total loss" and "val_nelbo" in history:
            ax.plot(epoch, history["val_nelbo"], ls=":", color="#ff7f0e",
                    label="validation NELBO (KL weight 1)")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#2ca02c", lw=1, ls="--",
                       label=f"best epoch ({best_epoch})")
        ax.set_title(name, fontsize=PANEL_TITLE_PT)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        twin.plot(epoch, history["beta"], color="0.45", ls="--", lw=1.2, label="KL weight")
        twin.set_ylabel("KL weight", color="0.35")
        twin.set_ylim(0, max(1.0, float(np.max(history["beta"]))) * 1.05)
        twin.tick_params(axis="y", colors="0.35", labelsize=8)
        ax.tick_params(labelsize=8)
        twins.append(twin)
    lines, names = [], []
    for a in (axes[0], twins[0]):
        got = a.get_legend_handles_labels()
        lines += got[0]
        names += got[1]
    fig.legend(lines, names, fontsize=9, loc="lower center", ncol=len(names), frameon=False)
    _title(fig, title)
    return save_png(fig, path)


NELBO_SIZE_PX = (800, 450)


def validation_nelbo(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                     title: str) -> Path:
    """Validation NELBO per epoch of several models on one axis: name -> (epochs, nelbo)."""
    fig = new_figure(*NELBO_SIZE_PX)
    ax = _plot_axes(fig, 1, 1, left=75, right=20, top=TITLE_PX + 10, bottom=50)[0, 0]
    for name, (epochs, nelbo) in curves.items():
        ax.plot(epochs, nelbo, marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NELBO (nats per image)")
    ax.legend()
    ax.grid(alpha=0.3)
    _title(fig, title)
    return save_png(fig, path)


KL_WIDTH_PX, KL_PANEL_PX = 1000, 260


def kl_per_dimension(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                     title: str, threshold: float) -> Path:
    """Bar chart of the KL of each latent dimension, one panel per checkpoint.

    ``panels`` maps a panel title to ``(kl (Z,), active (Z,) bool)``; active dimensions are
    drawn in colour, inactive ones in grey and hatched.
    """
    fig = new_figure(KL_WIDTH_PX, TITLE_PX + 60 + len(panels) * KL_PANEL_PX)
    axes = _plot_axes(fig, len(panels), 1, left=70, right=20, top=TITLE_PX + 25, bottom=50,
                      hspace=0.45, sharex=True)[:, 0]
    for ax, (name, (kl, active)) in zip(axes, panels.items()):
        kl, active = np.asarray(kl), np.asarray(active, bool)
        dims = np.arange(len(kl))
        on = {"color": "#1f77b4"}
        off = {"facecolor": "0.8", "hatch": "//", "edgecolor": "0.5"}
        ax.bar(dims[active], kl[active], **on)
        ax.bar(dims[~active], kl[~active], **off)
        ax.set_title(f"{name}: {int(active.sum())} of {len(kl)} dimensions active, "
                     f"total KL {kl.sum():.1f} nats", fontsize=PANEL_TITLE_PT)
        ax.set_ylabel("KL (nats per image)")
        ax.legend([Patch(**on), Patch(**off)],
                  [f"active: Var_x(mu_u) > {threshold:g}", "inactive"], fontsize=8,
                  loc="upper right")
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel("latent dimension")
    axes[-1].set_xticks(np.arange(len(kl)))
    _title(fig, title)
    return save_png(fig, path)


POSTERIOR_COL_PX, POSTERIOR_ROW_PX = 340, 290


def _density(values: np.ndarray, bins: np.ndarray, total: int) -> np.ndarray:
    return np.histogram(np.ravel(values), bins=bins)[0] / (total * np.diff(bins))


def posterior_histograms(panels: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray,
                                                     np.ndarray]],
                         prior_samples: np.ndarray, path: str | Path, title: str,
                         prior_title: str = "N(0, I)") -> Path:
    """Recipe 004's reparameterization figure on real encoder outputs, a row per checkpoint.

    ``panels`` maps a row title to ``(mu (N, Z), sigma (N, Z), z (N, Z), active (Z,))``. The
    first column shows samples of the prior (``prior_title``; pooled over its dimensions), with
    the N(0, 1) density for reference; the others histograms over all test
    images and dimensions of mu, sigma and z = mu + sigma * eps (active dimensions in colour,
    inactive ones stacked on top in grey), with the prior's density or sigma for reference.
    """
    n_rows = len(panels)
    fig = new_figure(4 * POSTERIOR_COL_PX, TITLE_PX + 30 + n_rows * POSTERIOR_ROW_PX)
    axes = _plot_axes(fig, n_rows, 4, left=60, right=15, top=TITLE_PX + 40, bottom=50,
                      wspace=0.32, hspace=0.55)
    grid = np.linspace(-4, 4, 200)
    pdf = np.exp(-0.5 * grid ** 2) / np.sqrt(2 * np.pi)
    for row, (name, (mu, sigma, z, active)) in zip(axes, panels.items()):
        active = np.asarray(active, bool)
        bins = np.linspace(-4, 4, 61)
        row[0].stairs(_density(prior_samples, bins, np.size(prior_samples)), bins, fill=True,
                      color="0.6", label="samples")
        row[0].plot(grid, pdf, color="k", lw=1.2, label="N(0, 1)")
        shown = "N(0, 1)" if prior_title == "N(0, I)" else f"{prior_title}, pooled"
        row[0].set_title(f"{name}\nprior p(z) = {shown}", fontsize=9)
        row[0].set_xlabel("z")
        for ax, values, label, lo_hi in ((row[1], mu, "mu", (-4, 4)),
                                         (row[2], sigma, "sigma", (0, 1.6)),
                                         (row[3], z, "z = mu + sigma * eps", (-4, 4))):
            values = np.asarray(values)
            bins = np.linspace(*lo_hi, 61)
            on = _density(values[:, active], bins, values.size)
            off = _density(values[:, ~active], bins, values.size)
            ax.stairs(on + off, bins, fill=True, color="0.75", label="inactive dims")
            ax.stairs(on, bins, fill=True, color="#1f77b4", label="active dims")
            if label == "sigma":
                ax.axvline(1.0, color="k", lw=1.2, label="prior sigma = 1")
            else:
                ax.plot(grid, pdf, color="k", lw=1.2, label="N(0, 1)")
            ax.set_title(f"{name}\nencoder {label}", fontsize=9)
            ax.set_xlabel(label.split(" ")[0])
        for ax in row:
            ax.set_ylabel("density")
            ax.tick_params(labelsize=8)
        row[3].legend(fontsize=7, loc="upper right")
    _title(fig, title)
    return save_png(fig, path)
