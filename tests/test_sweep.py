"""The beta sweep's library: measures against oracles, frame capture, the GIF and the table."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from vaepipe.config import SweepConfig
from vaepipe.figures.animation import frame_limits, read_gif_record, render_gif
from vaepipe.models.vae import build_model
from vaepipe.sweep.frames import Frame, FrameRecorder, frame_steps, probe_indices
from vaepipe.sweep.study import laplacian_variance, select_classes, sharpness, train_config
from vaepipe.sweep.table import COLUMNS, collect_runs, curves, markdown, metrics_tree, table
from vaepipe.train.loop import fit


def _shapes(n: int = 8, seed: int = 0) -> np.ndarray:
    """Images (n, 1, 28, 28) in [0, 1] with hard-edged bright rectangles on black."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, 28, 28))
    for img in images:
        r, c = rng.integers(2, 12, 2)
        img[0, r:r + rng.integers(6, 14), c:c + rng.integers(6, 14)] = 1.0
    return images


# --------------------------------------------------------------------------------------------
# Measures


def test_laplacian_variance_matches_scipy_on_the_interior():
    images = np.random.default_rng(1).random((5, 1, 28, 28))
    # scipy's laplace is the same 4-neighbour kernel; its border depends on a padding mode,
    # which the valid interior avoids
    expected = [ndimage.laplace(img[0])[1:-1, 1:-1].var() for img in images]
    got = laplacian_variance(torch.tensor(images, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_blurred_images_are_less_sharp_and_flat_ones_have_none():
    images = _shapes()
    blurred = np.stack([ndimage.gaussian_filter(img, sigma=(0, 1.0, 1.0)) for img in images])
    blurrier = np.stack([ndimage.gaussian_filter(img, sigma=(0, 2.0, 2.0)) for img in images])
    s = [sharpness(torch.tensor(x, dtype=torch.float32)) for x in (images, blurred, blurrier)]
    assert s[0] > 2 * s[1] > 0 and s[1] > s[2] > 0
    assert sharpness(torch.full((3, 1, 28, 28), 0.7)) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Classes, probe set, frame schedule


def test_select_classes_and_interleaved_probe():
    labels = np.array([3, 0, 1, 7, 0, 7, 1, 1, 0, 7])
    images = np.arange(10)[:, None]
    x, y = select_classes(images, labels, (0, 1, 7))
    assert y.tolist() == [0, 1, 7, 0, 7, 1, 1, 0, 7] and x[:, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    probe = probe_indices(y, (0, 1, 7), per_class=2)
    assert y[probe].tolist() == [0, 1, 7, 0, 1, 7]  # every prefix shows every class
    assert probe.tolist() == [0, 1, 2, 3, 5, 4]
    with pytest.raises(ValueError, match="no test images of class 5"):
        probe_indices(y, (0, 5), per_class=2)


def test_frame_steps_are_distinct_denser_early_and_span_training():
    steps = frame_steps(1280, 48)
    assert len(steps) == 48 == len(set(steps)) and steps == sorted(steps)
    assert steps[0] == 0 and steps[-1] == 1280
    assert sum(s <= 320 for s in steps) >= 24  # half the frames in the first quarter
    gaps = np.diff(steps)
    assert gaps[0] == 1 and gaps[-1] > 40 * gaps[0]
    assert frame_steps(3, 10) == [0, 1, 2, 3]  # fewer steps than frames: every step
    assert frame_steps(0, 5) == [0]


def test_recording_frames_does_not_change_the_trained_weights():
    rng = np.random.default_rng(5)
    train = rng.integers(0, 256, (96, 1, 28, 28), dtype=np.uint8)
    val = rng.integers(0, 256, (32, 1, 28, 28), dtype=np.uint8)
    cfg = train_config(SweepConfig(epochs=2, channels=(4, 8), batch_size=32))

    def run(record: bool):
        torch.manual_seed(0)
        model = build_model("conv", image_shape=(1, 28, 28), latent_dim=2, channels=(4, 8))
        recorder = FrameRecorder(torch.as_tensor(val[:12]), torch.as_tensor(val[:4]),
                                 frame_steps(6, 7), batches_per_epoch=3)
        modes = []

        def hook(epoch, batch, m):
            recorder(epoch, batch, m)
            modes.append(m.training)

        if record:
            recorder.start(model)
        fit(model, train, val, cfg, 0.5, seed=1, device=torch.device("cpu"), progress=False,
            on_batch=hook if record else None)
        return model.state_dict(), recorder, modes

    plain, _, _ = run(False)
    recorded, recorder, modes = run(True)
    assert plain.keys() == recorded.keys()
    for name in plain:  # BatchNorm running statistics included
        assert torch.equal(plain[name], recorded[name]), name
    assert modes == [True] * 6  # handed back in training mode after every batch
    assert [(f.epoch, f.batch) for f in recorder.frames] == [
        (0, 0), (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    first, last = recorder.frames[0], recorder.frames[-1]
    assert first.mu.shape == (12, 2) and first.recon.shape == (4, 28, 28)
    assert first.recon.dtype == np.uint8 and not np.allclose(first.mu, last.mu)


# --------------------------------------------------------------------------------------------
# The GIF


def _frames(n: int = 6) -> list[Frame]:
    rng = np.random.default_rng(6)
    out = []
    for k in range(n):
        spread = 0.1 + k  # the clusters move apart as "training" goes on
        mu = np.concatenate([rng.normal(c * spread, 0.3, (20, 2)) for c in (-1, 0, 1)])
        out.append(Frame(k, k, mu.astype(np.float32),
                         rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)))
    return out


def test_gif_has_every_frame_with_the_same_axes(tmp_path):
    frames = _frames()
    labels = np.repeat([0, 1, 7], 20)
    originals = np.full((4, 28, 28), 200, dtype=np.uint8)
    path = tmp_path / "latent.gif"
    record = render_gif(path, frames, labels, (0, 1, 7), ("T-shirt/top", "Trouser", "Sneaker"),
                        originals, "beta = 0.5", epochs=5, batches_per_epoch=9)
    n, sizes, stored = read_gif_record(path)
    assert n == len(frames) > 1 and len(set(sizes)) == 1
    assert stored == json.loads(json.dumps(record))
    xlim, ylim = frame_limits(frames)
    assert [f["xlim"] for f in stored["frames"]] == [list(xlim)] * n
    assert [f["ylim"] for f in stored["frames"]] == [list(ylim)] * n
    assert xlim[1] - xlim[0] == pytest.approx(ylim[1] - ylim[0])  # square box
    assert [(f["epoch"], f["batch"]) for f in stored["frames"]] == [(k, k) for k in range(6)]
    # the box holds the late, spread-out frames, not just the first
    last = frames[-1].mu
    inside = ((last[:, 0] > xlim[0]) & (last[:, 0] < xlim[1]) & (last[:, 1] > ylim[0])
              & (last[:, 1] < ylim[1]))
    assert inside.mean() > 0.9
    assert path.stat().st_size < 1_000_000


# --------------------------------------------------------------------------------------------
# The table


def _write_run(root, label, beta, **overrides):
    row = {"beta": beta, "epochs": 2, "test_recon": 210.0 + beta, "test_kl": 9.0 - beta,
           "test_nelbo": 219.0, "sharpness": 0.05, "sharpness_ratio": 0.3, "diversity": 6.0,
           "silhouette": 0.4 + beta / 10, "probe_accuracy": 0.9, "real_sharpness": 0.16,
           "real_diversity": 10.0, "real_diversity_images": 1000, "test_images": 3000,
           "prior_samples": 1000, "probe_train_images": 16000, "pixel_values": 784, **overrides}
    run = root / f"beta_{label}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(row))
    pd.DataFrame({"epoch": [1, 2], "val_recon": [220.0, 215.0], "val_kl": [5.0, 6.0],
                  "val_nelbo": [225.0, 221.0]}).to_csv(run / "history.csv", index=False)


def test_table_rows_labels_and_metrics(tmp_path):
    for label, beta in (("1.0", 1.0), ("0.1", 0.1), ("2", 2.0), ("0.5", 0.5)):
        _write_run(tmp_path, label, beta)
    pattern = str(tmp_path / "beta_*/metrics.json")
    history = str(tmp_path / "beta_*/history.csv")
    runs = collect_runs(pattern, history, (0.1, 1.0, 2.0))  # 0.5: a removed beta, ignored
    assert [r.label for r in runs] == ["0.1", "1.0", "2"]
    assert table(runs)["test_kl"].tolist() == [8.9, 8.0, 7.0]
    tree = metrics_tree(runs)
    assert list(tree["sweep"]) == ["0.1", "1.0", "2"]
    assert tree["sweep"]["2"]["silhouette"] == pytest.approx(0.6)
    assert all(isinstance(v, float) for row in tree["sweep"].values() for v in row.values())
    text = markdown(runs, ["T-shirt/top", "Trouser", "Sneaker"], "fashion-mnist")
    lines = text.splitlines()
    assert lines[0] == "### Beta sweep: measured comparison"
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[0] for r in rows] == ["| 0.1", "| 1.0", "| 2"]
    assert all(len(r.strip("|").split("|")) == len(COLUMNS) + 1 for r in rows)
    assert sum(line.startswith("- **") for line in lines) == len(COLUMNS)
    assert "{" not in text and "0.1600" in text  # placeholders filled from the metrics
    long = curves(runs)
    assert list(long.columns[:2]) == ["beta", "epoch"] and len(long) == 6

    with pytest.raises(FileNotFoundError, match="no sweep results for beta 0.25"):
        collect_runs(pattern, history, (0.1, 0.25))
    _write_run(tmp_path, "3", 3.0, silhouette=math.nan)
    with pytest.raises(ValueError, match=r"non-finite sweep metrics: 3\.silhouette"):
        metrics_tree(collect_runs(pattern, history, (3.0,)))
