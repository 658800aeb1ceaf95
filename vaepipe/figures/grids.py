"""The recipes' image-grid figures (samples, reconstructions, walks), and what every figure shares.

Every figure function (here and in :mod:`vaepipe.figures.plots`) is pure: arrays (images in
[0, 1] as ``(..., C, H, W)``, latent codes, per-epoch histories) in, a PNG written atomically
at ``path`` out. Nothing is re-encoded or decoded here; :mod:`vaepipe.figures.latent` computes
what the figures show. Matplotlib is used through
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
from matplotlib.textpath import TextToPath

from vaepipe.data.names import figure_text
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


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (a killed stage leaves no half-written figure)."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        # no "Software"/date chunks beyond matplotlib's fixed ones: equal arrays, equal bytes
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return path


def new_figure(width_px: int, height_px: int, **kwargs) -> Figure:
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
    fig = new_figure(layout.width, layout.height)
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
    return save_png(fig, path)


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
                   title: str, side: int = 8, prior_title: str = "N(0, I)") -> Path:
    """Recipe 002's frozen-latent grids: the prior's baseline, then mu = 0 with each sigma.

    ``frozen`` is (1 + len(sigmas), n, C, H, W); each condition becomes a side x side panel.
    """
    names = [f"baseline z ~ {prior_title}", *[f"mu = 0, sigma = {s:g}" for s in sigmas]]
    if len(frozen) != len(names):
        raise ValueError(f"frozen has {len(frozen)} conditions, sigmas give {len(names)}")
    panels = [Panel(as_grid(images[:side * side], side), title=name)
              for name, images in zip(names, frozen)]
    return image_grid(panels, path, title, scale=2, ncols=2)


def class_examples(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                   path: str | Path, title: str, per_class: int = 8) -> Path:
    """Real images, one row per class labelled with its name (recipe 002's sanity check)."""
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
        names.append(f"{c}: {figure_text(name)}")
    panel = Panel(np.stack(rows).astype(np.float32), row_labels=names)
    return image_grid([panel], path, title, scale=2)
