"""The figures of the seeds, drawn from arrays: one function per figure, each writes one PNG.

Every function here is pure: arrays (images in [0, 1] as ``(..., C, H, W)``, latent codes,
per-epoch histories) in, a PNG written atomically at ``path`` out. Nothing is re-encoded or
decoded here; :mod:`vaepipe.latent` computes what the figures show. Matplotlib is used through
its object API with the Agg canvas (no pyplot, no global state), so figures can be drawn in
any process, headless, and the same arrays always give the same bytes.

Image grids are laid out in pixels: each image pixel becomes ``scale`` x ``scale`` screen pixels
(nearest neighbour, no resampling blur), so a grid's PNG size follows from its shape alone
(:func:`grid_size_px`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch
from matplotlib.textpath import TextToPath

from vaepipe.io import atomic_path

DPI = 100
GAP = 2            # white pixels between the images of a grid (image pixels, before scaling)
TITLE_PX = 34      # figure title band
PANEL_TITLE_PX = 22
COL_LABEL_PX = 18
MARGIN_PX = 8
PANEL_GAP_PX = 24
LABEL_PT = 9.0
SMALL_LABEL_PT = 7.0  # column labels of grids whose cells are narrower than 50 px
TITLE_PT = 12.0
PANEL_TITLE_PT = 10.0
_TEXT_TO_PATH = TextToPath()
CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf")  # matplotlib's tab10


@dataclass(frozen=True)
class Panel:
    """One block of an image grid figure.

    ``images`` is (rows, cols, C, H, W) in [0, 1]; ``row_labels`` / ``col_labels`` are drawn
    left of each row / above each column (empty: none).
    """

    images: np.ndarray
    title: str = ""
    row_labels: Sequence[str] = field(default_factory=tuple)
    col_labels: Sequence[str] = field(default_factory=tuple)


# --------------------------------------------------------------------------------------------
# Helpers


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (a killed stage leaves no half-written figure)."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        # no "Software"/date chunks beyond matplotlib's fixed ones: equal arrays, equal bytes
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return path


def _figure(width_px: int, height_px: int, **kwargs) -> Figure:
    # +0.25 px: Agg truncates figsize * dpi to an integer, and W / 100 * 100 can land a hair
    # below W in floating point; the quarter pixel makes the PNG exactly W x H.
    return Figure(figsize=((width_px + 0.25) / DPI, (height_px + 0.25) / DPI), dpi=DPI,
                  **kwargs)


def mosaic(images: np.ndarray, gap: int = GAP) -> np.ndarray:
    """Tile (rows, cols, C, H, W) images into one (H', W') or (H', W', 3) array with white gaps."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 5:
        raise ValueError(f"images must be (rows, cols, C, H, W), got shape {images.shape}")
    rows, cols, c, h, w = images.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {c}")
    out = np.ones((rows * (h + gap) + gap, cols * (w + gap) + gap, c), dtype=np.float32)
    for r in range(rows):
        for k in range(cols):
            y, x = gap + r * (h + gap), gap + k * (w + gap)
            out[y:y + h, x:x + w] = np.clip(images[r, k].transpose(1, 2, 0), 0.0, 1.0)
    return out[..., 0] if c == 1 else out


def as_grid(images: np.ndarray, ncols: int) -> np.ndarray:
    """(N, C, H, W) -> (ceil(N / ncols), ncols, C, H, W), padding the last row with white."""
    images = np.asarray(images, dtype=np.float32)
    n = len(images)
    rows = math.ceil(n / ncols)
    pad = rows * ncols - n
    if pad:
        images = np.concatenate([images, np.ones((pad, *images.shape[1:]), np.float32)])
    return images.reshape(rows, ncols, *images.shape[1:])


def _text_px(text: str, size_pt: float, bold: bool = False) -> int:
    """Width in pixels of ``text`` drawn in matplotlib's default font at ``size_pt``."""
    prop = FontProperties(size=size_pt, weight="bold" if bold else "normal")
    width_pt, _, _ = _TEXT_TO_PATH.get_text_width_height_descent(text, prop, ismath=False)
    return int(math.ceil(width_pt * DPI / 72))


def _label_px(labels: Sequence[str]) -> int:
    return max(_text_px(s, LABEL_PT) for s in labels) + 10 if labels else 0


@dataclass(frozen=True)
class _GridLayout:
    width: int
    height: int
    panel_w: int       # the image block of one panel
    panel_h: int
    label_w: int       # row-label band left of each panel
    top: int           # px from the top to the first image block
    ncols: int
    row_step: int      # px from one panel row to the next


def _grid_layout(panels: Sequence[Panel], title: str, scale: int, ncols: int) -> _GridLayout:
    shapes = {p.images.shape for p in panels}
    if len(shapes) != 1:
        raise ValueError(f"all panels of one figure must have the same shape, got {shapes}")
    rows, cols, _, h, w = next(iter(shapes))
    panel_w = (cols * (w + GAP) + GAP) * scale
    panel_h = (rows * (h + GAP) + GAP) * scale
    label_w = max(_label_px(p.row_labels) for p in panels)
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    head = ((PANEL_TITLE_PX if any(p.title for p in panels) else 0)
            + (COL_LABEL_PX if any(p.col_labels for p in panels) else 0))
    width = 2 * MARGIN_PX + ncols * (label_w + panel_w) + (ncols - 1) * PANEL_GAP_PX
    width = max(width, _text_px(title, TITLE_PT, bold=True) + 4 * MARGIN_PX)
    row_step = head + panel_h + PANEL_GAP_PX
    height = TITLE_PX + nrows * row_step - PANEL_GAP_PX + MARGIN_PX
    return _GridLayout(width, height, panel_w, panel_h, label_w, TITLE_PX + head, ncols,
                       row_step)


def grid_size_px(panels: Sequence[Panel], title: str, scale: int = 2, ncols: int = 4
                 ) -> tuple[int, int]:
    """(width, height) in pixels of :func:`image_grid`'s PNG for these panels."""
    layout = _grid_layout(panels, title, scale, ncols)
    return layout.width, layout.height


# --------------------------------------------------------------------------------------------
# Image grids


def image_grid(panels: Sequence[Panel], path: str | Path, title: str, scale: int = 2,
               ncols: int = 4) -> Path:
    """Panels of image grids, ``ncols`` panels per row, each with its labels; writes a PNG."""
    if not panels:
        raise ValueError("image_grid needs at least one panel")
    layout = _grid_layout(panels, title, scale, ncols)
    fig = _figure(layout.width, layout.height)
    W, H = layout.width, layout.height
    fig.text(0.5, 1 - (TITLE_PX / 2) / H, title, ha="center", va="center",
             fontsize=TITLE_PT, weight="bold")
    # centre the block of panels when the title made the figure wider than they are
    used = layout.ncols * (layout.label_w + layout.panel_w) + (layout.ncols - 1) * PANEL_GAP_PX
    left0 = (W - used) // 2
    _, cols, _, h, w = panels[0].images.shape
    rows = panels[0].images.shape[0]
    for i, panel in enumerate(panels):
        r, k = divmod(i, layout.ncols)
        x0 = left0 + k * (layout.label_w + layout.panel_w + PANEL_GAP_PX) + layout.label_w
        y_top = layout.top + r * layout.row_step           # px from the top of the figure
        ax = fig.add_axes((x0 / W, 1 - (y_top + layout.panel_h) / H,
                           layout.panel_w / W, layout.panel_h / H))
        image = mosaic(panel.images)
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0,
                  interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        cell_h, cell_w = (h + GAP) * scale, (w + GAP) * scale
        if panel.title:
            above = COL_LABEL_PX if panel.col_labels else 0
            fig.text((x0 + layout.panel_w / 2) / W, 1 - (y_top - above - PANEL_TITLE_PX / 2) / H,
                     panel.title, ha="center", va="center", fontsize=PANEL_TITLE_PT)
        col_pt = LABEL_PT if cell_w >= 50 else SMALL_LABEL_PT
        for j, label in enumerate(panel.col_labels[:cols]):
            cx = x0 + GAP * scale / 2 + j * cell_w + cell_w / 2
            fig.text(cx / W, 1 - (y_top - COL_LABEL_PX / 2) / H, label, ha="center",
                     va="center", fontsize=col_pt)
        for j, label in enumerate(panel.row_labels[:rows]):
            cy = y_top + GAP * scale / 2 + j * cell_h + cell_h / 2
            fig.text((x0 - 4) / W, 1 - cy / H, label, ha="right", va="center",
                     fontsize=LABEL_PT)
    return _save(fig, path)


def reconstructions(rows: Mapping[str, np.ndarray], path: str | Path, title: str) -> Path:
    """Labelled rows of images (N, C, H, W): test inputs, then each checkpoint's reconstructions."""
    images = np.stack([np.asarray(r, np.float32) for r in rows.values()])  # (rows, N, C, H, W)
    return image_grid([Panel(images, row_labels=list(rows))], path, title, scale=2)


def sample_grids(samples: Mapping[str, np.ndarray], side: int, path: str | Path,
                 title: str) -> Path:
    """A ``side`` x ``side`` grid of the first side**2 samples, one panel per checkpoint."""
    panels = []
    for label, images in samples.items():
        if len(images) < side * side:
            raise ValueError(f"{label}: {side}x{side} grid needs {side * side} samples, "
                             f"got {len(images)}")
        panels.append(Panel(as_grid(images[:side * side], side), title=label))
    return image_grid(panels, path, title, scale=2 if side <= 8 else 1, ncols=len(panels))


def interpolation(rows: Mapping[str, np.ndarray], alphas: Sequence[float],
                  path: str | Path, title: str) -> Path:
    """One row per checkpoint of images decoded along a line in latent space (steps, C, H, W)."""
    images = np.stack([np.asarray(r, np.float32) for r in rows.values()])
    panel = Panel(images, row_labels=list(rows), col_labels=[f"{a:.2f}" for a in alphas])
    return image_grid([panel], path, title, scale=2)


def traversals(grids: Mapping[str, np.ndarray], values: Sequence[float],
               row_labels: Mapping[str, Sequence[str]], path: str | Path, title: str) -> Path:
    """One panel per checkpoint: row d varies latent dimension d over ``values``.

    Each grid is (Z, steps, C, H, W); ``row_labels[name]`` labels its Z rows.
    """
    panels = [Panel(np.asarray(g, np.float32), title=name, row_labels=row_labels[name],
                    col_labels=[f"{v:+.1f}" for v in values]) for name, g in grids.items()]
    z = panels[0].images.shape[0]
    return image_grid(panels, path, title, scale=1 if z > 20 else 2, ncols=len(panels))


def frozen_latents(frozen: np.ndarray, sigmas: Sequence[float], path: str | Path,
                   title: str, side: int = 8) -> Path:
    """Seed 002's frozen-latent grids: the N(0, I) baseline, then mu = 0 with each sigma.

    ``frozen`` is (1 + len(sigmas), n, C, H, W); each condition becomes a side x side panel.
    """
    names = ["baseline z ~ N(0, I)", *[f"mu = 0, sigma = {s:g}" for s in sigmas]]
    if len(frozen) != len(names):
        raise ValueError(f"frozen has {len(frozen)} conditions, sigmas give {len(names)}")
    panels = [Panel(as_grid(images[:side * side], side), title=name)
              for name, images in zip(names, frozen)]
    return image_grid(panels, path, title, scale=2, ncols=2)


def class_examples(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                   path: str | Path, title: str, per_class: int = 8) -> Path:
    """Real images, one row per class labelled with its name (seed 002's sanity check)."""
    rows, names = [], []
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(labels == c)[:per_class]
        if len(idx) == 0:
            continue
        chosen = images[idx]
        if len(idx) < per_class:  # a tiny split: pad the row with white
            chosen = np.concatenate([chosen, np.ones((per_class - len(idx), *images.shape[1:]),
                                                     images.dtype)])
        rows.append(chosen)
        names.append(f"{c}: {name}")
    panel = Panel(np.stack(rows).astype(np.float32), row_labels=names)
    return image_grid([panel], path, title, scale=2)


# --------------------------------------------------------------------------------------------
# Plots
#
# Laid out with fixed margins in pixels rather than matplotlib's constrained layout, which
# measured every tick label of every axes again on each draw and cost more than the drawing.


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
    fig = _figure(*SCATTER_SIZE_PX)
    axes = _plot_axes(fig, 1, len(panels), left=60, right=170, top=TITLE_PX + 30, bottom=50,
                      wspace=0.18)[0]
    labels = np.asarray(labels)
    for ax, (name, xy) in zip(axes, panels.items()):
        for c, cname in enumerate(class_names):
            sel = labels == c
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=4, color=CLASS_COLORS[c % 10],
                           label=f"{c}: {cname}", alpha=0.8, linewidths=0)
        ax.set_title(name, fontsize=PANEL_TITLE_PT)
        ax.set_xlabel(f"{axis_name} 1")
        ax.set_ylabel(f"{axis_name} 2")
        ax.tick_params(labelsize=8)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", markerscale=3, fontsize=9,
               title="class", frameon=False, bbox_to_anchor=(1.0, 0.5))
    _title(fig, title)
    return _save(fig, path)


CURVES_SIZE_PX = (1500, 470)


def loss_curves(history: Mapping[str, np.ndarray], path: str | Path, title: str,
                best_epoch: int | None = None) -> Path:
    """Total, reconstruction and KL per epoch, train and validation, KL weight on a twin axis.

    ``history`` holds the training history's columns (``epoch``, ``beta`` (the epoch's KL
    weight), ``train_loss``, ``val_loss``, ``train_recon``, ``val_recon``, ``train_kl``,
    ``val_kl``, ``val_nelbo``).
    """
    fig = _figure(*CURVES_SIZE_PX)
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
    return _save(fig, path)


NELBO_SIZE_PX = (800, 450)


def validation_nelbo(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                     title: str) -> Path:
    """Validation NELBO per epoch of several models on one axis: name -> (epochs, nelbo)."""
    fig = _figure(*NELBO_SIZE_PX)
    ax = _plot_axes(fig, 1, 1, left=75, right=20, top=TITLE_PX + 10, bottom=50)[0, 0]
    for name, (epochs, nelbo) in curves.items():
        ax.plot(epochs, nelbo, marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NELBO (nats per image)")
    ax.legend()
    ax.grid(alpha=0.3)
    _title(fig, title)
    return _save(fig, path)


KL_WIDTH_PX, KL_PANEL_PX = 1000, 260


def kl_per_dimension(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                     title: str, threshold: float) -> Path:
    """Bar chart of the KL of each latent dimension, one panel per checkpoint.

    ``panels`` maps a panel title to ``(kl (Z,), active (Z,) bool)``; active dimensions are
    drawn in colour, inactive ones in grey and hatched.
    """
    fig = _figure(KL_WIDTH_PX, TITLE_PX + 60 + len(panels) * KL_PANEL_PX)
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
    return _save(fig, path)


POSTERIOR_COL_PX, POSTERIOR_ROW_PX = 340, 290


def _density(values: np.ndarray, bins: np.ndarray, total: int) -> np.ndarray:
    return np.histogram(np.ravel(values), bins=bins)[0] / (total * np.diff(bins))


def posterior_histograms(panels: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray,
                                                     np.ndarray]],
                         prior_samples: np.ndarray, path: str | Path, title: str) -> Path:
    """Seed 004's reparameterization figure on real encoder outputs, a row per checkpoint.

    ``panels`` maps a row title to ``(mu (N, Z), sigma (N, Z), z (N, Z), active (Z,))``. The
    first column shows samples of the prior N(0, 1); the others histograms over all test
    images and dimensions of mu, sigma and z = mu + sigma * eps (active dimensions in colour,
    inactive ones stacked on top in grey), with the prior's density or sigma for reference.
    """
    n_rows = len(panels)
    fig = _figure(4 * POSTERIOR_COL_PX, TITLE_PX + 30 + n_rows * POSTERIOR_ROW_PX)
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
        row[0].set_title(f"{name}\nprior p(z) = N(0, 1)", fontsize=9)
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
    return _save(fig, path)
