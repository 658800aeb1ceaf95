"""Latent-evolution GIFs, drawn after training from arrays recorded during it.

Training only stores each frame's latent means and reconstructions
(:class:`vaepipe.sweep.frames.Frame`); this
module turns them into pictures on a matplotlib Agg canvas and writes the GIF with Pillow,
so no plotting happens on the training hot path. Every frame is drawn into the same figure
with the same axes limits, so what moves between frames is the latent space itself.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from PIL import Image

from vaepipe.data.names import figure_text
from vaepipe.io import write_bytes
from vaepipe.sweep.frames import Frame

GAP = 2  # pixels between the strip's images


def frame_limits(frames: Sequence[Frame], quantile: float = 0.005,
                 pad: float = 0.08) -> tuple[tuple[float, float], tuple[float, float]]:
    """One square box for every frame: ``(xlim, ylim)``.

    The box holds the central ``1 - 2 * quantile`` of all frames' latent means on each axis
    (so a few far-flung points of an untrained model do not shrink everyone else), padded
    by ``pad`` of its side; both axes get the same length so distances read the same way.
    """
    points = np.concatenate([f.mu[:, :2] for f in frames]).astype(np.float64)
    lo = np.quantile(points, quantile, axis=0)
    hi = np.quantile(points, 1 - quantile, axis=0)
    centre = (lo + hi) / 2
    half = max(float((hi - lo).max()) / 2, 1e-3) * (1 + pad)
    return ((float(centre[0] - half), float(centre[0] + half)),
            (float(centre[1] - half), float(centre[1] + half)))


def strip_image(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Two rows of (S, H, W) grey or (S, H, W, 3) RGB uint8 images as one
    (2H + GAP, S(W + GAP) - GAP[, 3]) picture."""
    s, h, w = top.shape[:3]
    out = np.full((2 * h + GAP, s * (w + GAP) - GAP, *top.shape[3:]), 255, dtype=np.uint8)
    for i in range(s):
        x0 = i * (w + GAP)
        out[:h, x0:x0 + w] = top[i]
        out[h + GAP:, x0:x0 + w] = bottom[i]
    return out


def render_gif(path: str | Path, frames: Sequence[Frame], labels: np.ndarray,
               class_ids: Sequence[int], class_names: Sequence[str], originals: np.ndarray,
               title: str, epochs: int, batches_per_epoch: int,
               limits: tuple[tuple[float, float], tuple[float, float]] | None = None,
               frame_ms: int = 160, last_ms: int = 2500, dpi: int = 72) -> dict:
    """Draw ``frames`` into an animated GIF at ``path``; returns what each frame showed.

    ``labels`` (P,) are the probe images' classes (values of ``class_ids``, named by
    ``class_names``); ``originals`` (S, H, W) or (S, H, W, 3) uint8 are the strip images whose
    reconstructions each frame holds. ``limits`` defaults to :func:`frame_limits`. The
    returned record (``xlim``, ``ylim``, and per frame ``epoch``, ``batch`` and the axes
    limits read back from the drawn axes) is also stored as the GIF's comment.
    """
    if len(frames) < 1:
        raise ValueError("render_gif needs at least one frame")
    xlim, ylim = limits or frame_limits(frames)
    scene = _scene(labels, class_ids, class_names, originals, xlim, ylim, dpi)
    rgbs, record = _draw_frames(scene, frames, originals, title, epochs, batches_per_epoch)
    record = {"xlim": list(xlim), "ylim": list(ylim), "frames": record}
    write_bytes(path, _gif_bytes(rgbs, record, frame_ms, last_ms))
    return record


@dataclass
class _Scene:
    """The figure of a latent-evolution GIF and the artists each frame redraws."""

    fig: Figure
    canvas: FigureCanvasAgg
    ax: Any
    strip_ax: Any
    scatters: list      # (mask of the probe images of a class, its scatter)
    heading: Any
    image: Any


def _scene(labels, class_ids, class_names, originals, xlim, ylim, dpi) -> _Scene:
    """The static parts (axes, prior circles, legend, strip labels) and the animated artists."""
    # a bare Figure on an Agg canvas: no pyplot, no backend or global state to leak
    fig = Figure(figsize=(5.2, 6.6), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 1, height_ratios=[5, 1.5], hspace=0.12,
                            left=0.14, right=0.97, top=0.86, bottom=0.03)
    ax = fig.add_subplot(grid[0])
    strip_ax = fig.add_subplot(grid[1])
    colours = colormaps["tab10"]
    scatters = []
    for k, (cls, name) in enumerate(zip(class_ids, class_names)):
        points = ax.scatter([], [], s=6, alpha=0.6, color=colours(k % 10),
                            label=f"{cls}: {figure_text(name)}", linewidths=0,
                            animated=True)
        scatters.append((labels == cls, points))
    for radius in (1, 2):  # the prior N(0, I): 1 and 2 standard deviations
        ax.add_patch(Circle((0, 0), radius, fill=False, ls="--", lw=0.8, color="0.6"))
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    ax.set_aspect("equal")
    ax.set_xlabel(r"$\mu_1$   (dashed: 1 and 2 sd of the prior N(0, I))", fontsize=9)
    ax.set_ylabel(r"$\mu_2$")
    # above the axes, so the points never hide it (they are drawn last, see below)
    fig.legend(handles=[p for _, p in scatters], loc="upper center", ncols=len(scatters),
               bbox_to_anchor=(0.55, 0.915), fontsize=8, markerscale=2.5, frameon=False,
               handletextpad=0.1, columnspacing=1.0)
    heading = fig.suptitle("", fontsize=11, animated=True)
    image = strip_ax.imshow(strip_image(originals, originals), cmap="gray", vmin=0, vmax=255,
                            interpolation="nearest", animated=True)
    h = originals.shape[1]
    strip_ax.set_xticks([])
    strip_ax.set_yticks([h / 2, h + GAP + h / 2], ["original", "reconstr."], fontsize=8)
    strip_ax.tick_params(length=0)
    for side in strip_ax.spines.values():
        side.set_visible(False)
    return _Scene(fig, canvas, ax, strip_ax, scatters, heading, image)


def _draw_frames(scene: _Scene, frames, originals, title, epochs, batches_per_epoch
                 ) -> tuple[list[np.ndarray], list[dict]]:
    """Each frame as RGB pixels, and what it showed (epoch, batch, the axes' limits)."""
    # Blitting: the static parts (axes, ticks, legend, circles) are drawn once; each frame
    # restores them and draws only the animated artists, much faster than a full draw.
    canvas, ax = scene.canvas, scene.ax
    canvas.draw()
    background = canvas.copy_from_bbox(scene.fig.bbox)
    rgbs, record = [], []
    for frame in frames:
        canvas.restore_region(background)
        for mask, points in scene.scatters:
            points.set_offsets(frame.mu[mask, :2])
            ax.draw_artist(points)
        scene.image.set_data(strip_image(originals, frame.recon))
        scene.strip_ax.draw_artist(scene.image)
        when = ("before training" if frame.epoch == 0 else
                f"epoch {frame.epoch}/{epochs}, batch {frame.batch}/{batches_per_epoch}")
        scene.heading.set_text(f"{title}\n{when}")
        scene.fig.draw_artist(scene.heading)
        rgbs.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
        record.append({"epoch": frame.epoch, "batch": frame.batch,
                       "xlim": list(ax.get_xlim()), "ylim": list(ax.get_ylim())})
    return rgbs, record


def _gif_bytes(rgbs: list[np.ndarray], record: dict, frame_ms: int, last_ms: int) -> bytes:
    """The frames as one looping GIF with ``record`` as its comment."""
    # One palette for every frame, from up to 8 frames spread over training (noisy and
    # trained greys, every class colour and the blends of overlapping translucent points):
    # no colour flicker between frames, and one palette search instead of one per frame.
    sample = np.linspace(0, len(rgbs) - 1, min(8, len(rgbs))).round().astype(int)
    palette = Image.fromarray(np.concatenate([rgbs[i] for i in sample])).quantize(
        colors=255, dither=Image.Dither.NONE)
    pictures = [Image.fromarray(rgb).quantize(palette=palette, dither=Image.Dither.NONE)
                for rgb in rgbs]
    durations = [frame_ms] * (len(pictures) - 1) + [last_ms]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=durations, loop=0, optimize=False,
                     comment=json.dumps(record, separators=(",", ":")).encode())
    return buffer.getvalue()


def read_gif_record(path: str | Path) -> tuple[int, list[tuple[int, int]], dict]:
    """``(number of frames, each frame's size, the record stored by render_gif)``."""
    with Image.open(path) as gif:
        comment = gif.info.get("comment", b"{}")
        sizes = []
        for i in range(gif.n_frames):
            gif.seek(i)
            sizes.append(gif.size)
        return gif.n_frames, sizes, json.loads(comment)
