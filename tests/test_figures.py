"""Figure functions write PNGs of the expected size; the latent computations behind them hold."""
import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from vaepipe.config import VisualizeConfig
from vaepipe.figures import grids, latent, plots
from vaepipe.figures.gallery import COMPARED, FigurePlan, ModelRun, draw_prior_samples
from vaepipe.models.vae import build_model

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _one_thread():
    # arrays here are tiny; BLAS/OpenMP thread pools only wait on each other on a busy machine
    with threadpool_limits(1):
        yield


def png_size(path):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def images(*shape):
    return RNG.random(shape, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Image grids: sizes worked out by hand from the layout constants in grids.py (title band
# 34, margins 8, column labels 18, panel titles 22, 24 between panels, each 28 px image plus
# a 2 px gap, times the scale); only the row-label band is measured, from the font.


def band(*labels):
    return grids._label_px(labels)


def test_reconstructions_size_rows_labelled(tmp_path):
    rows = {"test input": images(4, 1, 28, 28), "epoch 1": images(4, 1, 28, 28),
            "best (epoch 9)": images(4, 1, 28, 28)}
    path = grids.reconstructions(rows, tmp_path / "r.png", "t")
    labels = band("test input", "epoch 1", "best (epoch 9)")
    assert 80 < labels < 130
    assert png_size(path) == (8 + labels + (4 * 30 + 2) * 2 + 8, 34 + (3 * 30 + 2) * 2 + 8)


def test_sample_grids_side_by_side(tmp_path):
    samples = {"epoch 1": images(100, 1, 28, 28), "best": images(100, 1, 28, 28)}
    four = grids.sample_grids(samples, 4, tmp_path / "s4.png", "t")
    side = (4 * 30 + 2) * 2  # 244 px per panel
    assert png_size(four) == (8 + side + 24 + side + 8, 34 + 22 + side + 8)
    ten = grids.sample_grids(samples, 10, tmp_path / "s10.png", "t")  # scale 1 for 10x10
    assert png_size(ten) == (8 + 302 + 24 + 302 + 8, 34 + 22 + 302 + 8)
    with pytest.raises(ValueError, match="needs 64 samples"):
        grids.sample_grids({"x": images(10, 1, 28, 28)}, 8, tmp_path / "bad.png", "t")


def test_colour_images_and_a_long_title_widen_the_figure(tmp_path):
    title = "x" * 100
    path = grids.reconstructions({"in": images(2, 3, 32, 32)}, tmp_path / "c.png", title)
    wide = grids._text_px(title, grids.TITLE_PT, bold=True)
    assert wide > 800
    assert png_size(path) == (wide + 32, 34 + (32 + 4) * 2 + 8)


def test_interpolation_and_frozen_and_class_examples(tmp_path):
    rows = {"epoch 1": images(10, 1, 28, 28), "best": images(10, 1, 28, 28)}
    path = grids.interpolation(rows, np.linspace(0, 1, 10), tmp_path / "i.png", "t")
    assert png_size(path) == (8 + band("epoch 1", "best") + (10 * 30 + 2) * 2 + 8,
                              34 + 18 + (2 * 30 + 2) * 2 + 8)

    frozen = images(4, 64, 1, 28, 28)
    path = grids.frozen_latents(frozen, [0.1, 0.5, 1.0], tmp_path / "f.png", "t")
    side = (8 * 30 + 2) * 2  # 2 x 2 panels of 8 x 8 at scale 2
    assert png_size(path) == (8 + 2 * side + 24 + 8, 34 + 2 * (22 + side + 24) - 24 + 8)
    with pytest.raises(ValueError, match="conditions"):
        grids.frozen_latents(frozen, [0.1, 0.5], tmp_path / "f2.png", "t")

    labels = np.arange(40) % 10
    names = [f"class {i}" for i in range(10)]
    path = grids.class_examples(images(40, 1, 28, 28), labels, names, tmp_path / "c.png", "t",
                                  per_class=4)
    rows = band(*[f"{i}: class {i}" for i in range(10)])
    assert png_size(path) == (8 + rows + (4 * 30 + 2) * 2 + 8, 34 + (10 * 30 + 2) * 2 + 8)


def test_traversal_grid_has_one_row_per_latent_dimension(tmp_path):
    """Row d of the PNG shows dimension d: each row is drawn in its own grey level."""
    z, steps = 5, 11
    levels = np.linspace(0.1, 0.9, z)
    grid = np.broadcast_to(levels[:, None, None, None, None], (z, steps, 1, 28, 28)).copy()
    labels = [f"z{d}" for d in range(z)]
    path = grids.traversals({"best": grid}, np.linspace(-3, 3, steps), {"best": labels},
                              tmp_path / "t.png", "t")
    width, height = png_size(path)
    top = 34 + 22 + 18                        # title, panel title, value labels
    assert height == top + (z * 30 + 2) * 2 + 8
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
    x = 8 + band(*labels) + 2 + 28            # inside the first column
    for d in range(z):
        y = top + 2 + d * 60 + 30             # centre of row d
        assert pixels[y, x] == pytest.approx(levels[d], abs=0.01)
    assert pixels[top + 2 + z * 60 + 2, x] > 0.98  # below the last row: white, no extra row

    fewer = grids.traversals({"best": grid[:3]}, np.linspace(-3, 3, steps),
                               {"best": labels[:3]}, tmp_path / "t3.png", "t")
    assert height - png_size(fewer)[1] == 2 * 30 * 2  # two rows fewer, 60 px each


def test_traversal_latents_move_one_dimension_per_row():
    z0 = np.array([0.5, -1.0, 2.0], np.float32)
    values, z = latent.traversal_latents(z0, 3.0, 11)
    assert z.shape == (3, 11, 3)
    np.testing.assert_allclose(values, np.linspace(-3, 3, 11))
    for d in range(3):
        np.testing.assert_allclose(z[d, :, d], values)
        others = np.delete(z[d], d, axis=1)
        np.testing.assert_array_equal(others, np.broadcast_to(np.delete(z0, d), others.shape))


def test_decoded_traversal_of_a_tiny_model_has_one_image_row_per_dimension(tmp_path):
    torch.manual_seed(0)
    model = build_model("conv", image_shape=(1, 28, 28), latent_dim=6, channels=(4, 8)).eval()
    values, z = latent.traversal_latents(np.zeros(6, np.float32), 3.0, 11)
    grid = latent.decode_images(model, z)
    assert grid.shape == (6, 11, 1, 28, 28)
    assert 0 <= grid.min() and grid.max() <= 1
    labels = {"best": [f"z{d}" for d in range(6)]}
    path = grids.traversals({"best": grid}, values, labels, tmp_path / "t.png", "t")
    assert png_size(path)[1] == 34 + 22 + 18 + (6 * 30 + 2) * 2 + 8


# --------------------------------------------------------------------------------------------
# Plots: fixed sizes


def test_plots_have_their_fixed_sizes(tmp_path):
    n = 300
    labels = np.arange(n) % 10
    names = [f"c{i}" for i in range(10)]
    xy = RNG.normal(size=(n, 2)).astype(np.float32)
    path = plots.latent_scatter({"epoch 1": xy, "best": xy}, labels, names,
                                  tmp_path / "s.png", "t", "PC")
    assert png_size(path) == plots.SCATTER_SIZE_PX == (1300, 620)

    epochs = np.arange(1, 6, dtype=float)
    history = {k: RNG.random(5) + 1 for k in ("train_loss", "val_loss", "train_recon",
                                               "val_recon", "train_kl", "val_kl", "val_nelbo")}
    history |= {"epoch": epochs, "beta": np.minimum(1, epochs / 3)}
    path = plots.loss_curves(history, tmp_path / "l.png", "t", best_epoch=4)
    assert png_size(path) == (1500, 470)
    path = plots.validation_nelbo({"a": (epochs, epochs), "b": (epochs, 2 * epochs)},
                                    tmp_path / "v.png", "t")
    assert png_size(path) == (800, 450)

    kl, active = RNG.random(8), np.arange(8) < 5
    path = plots.kl_per_dimension({"epoch 1": (kl, active), "best": (kl, ~active)},
                                    tmp_path / "k.png", "t", 0.01)
    assert png_size(path) == (1000, 34 + 60 + 2 * 260)

    mu, logvar = RNG.normal(size=(50, 8)), RNG.normal(size=(50, 8)) * 0.1
    sigma, z = latent.posterior_samples(mu, logvar, seed=0)
    path = plots.posterior_histograms({"best": (mu, sigma, z, active)},
                                        RNG.normal(size=1000), tmp_path / "p.png", "t")
    assert png_size(path) == (4 * 340, 34 + 30 + 290)


def test_same_arrays_give_the_same_bytes(tmp_path):
    samples = {"best": images(16, 1, 28, 28)}
    a = grids.sample_grids(samples, 4, tmp_path / "a.png", "t").read_bytes()
    b = grids.sample_grids(samples, 4, tmp_path / "b.png", "t").read_bytes()
    assert a == b  # DVC hashes outputs: a rerun on the same inputs changes nothing


# --------------------------------------------------------------------------------------------
# What the figures show


def test_pca_explained_variance_matches_scikit_learn():
    from sklearn.decomposition import PCA

    x = RNG.normal(size=(400, 6)) * np.array([5, 3, 1, 1, 0.5, 0.1])
    coords, explained = latent.pca_2d(x)
    ref = PCA(2).fit(x)
    np.testing.assert_allclose(explained, ref.explained_variance_ratio_, rtol=1e-6)
    np.testing.assert_allclose(np.abs(coords), np.abs(ref.transform(x)), rtol=1e-4, atol=1e-4)
    assert latent.pca_2d(x[:, :1])[0].shape == (400, 2)  # a 1-D latent still plots


def test_pairs_and_tsne_are_seeded():
    labels = np.array([3] * 20 + [5])
    a, b = latent.pick_pair(labels, seed=1)
    assert labels[a] != labels[b] and latent.pick_pair(labels, seed=1) == (a, b)
    x = RNG.normal(size=(20, 4)).astype(np.float32)  # perplexity capped for 20 points
    np.testing.assert_array_equal(latent.tsne_2d(x, 0, 30.0, 250),
                                  latent.tsne_2d(x, 0, 30.0, 250))


def test_interpolation_runs_from_one_mean_to_the_other():
    alphas, z = latent.interpolation_latents(np.zeros(3), np.ones(3), 10)
    assert z.shape == (10, 3) and alphas[0] == 0 and alphas[-1] == 1
    np.testing.assert_allclose(z[0], 0)
    np.testing.assert_allclose(z[-1], 1)


# --------------------------------------------------------------------------------------------
# The gallery's plan: which figures a model gets comes from its run, not from its name


def test_a_run_gets_the_prior_sample_grids_it_asks_for(tmp_path):
    evaluations = {c: {"samples": images(100, 1, 28, 28)} for c in COMPARED}
    model = build_model("mlp", image_shape=(1, 28, 28), latent_dim=2, hidden=(8,))

    def drawn(name, **sides):
        run = ModelRun(name, evaluations, {c: model for c in COMPARED},
                       {"epoch_01": 1, "best": 4}, **sides)
        plan = FigurePlan(run, np.zeros((1, 1, 28, 28), np.uint8), np.zeros(1, np.int64),
                          ["a"], VisualizeConfig(), 0, tmp_path)
        return [(e.path.name, e.headline) for e in draw_prior_samples(plan)]

    assert drawn("mlp") == [("mlp_samples_4x4.png", False), ("mlp_samples_8x8.png", True)]
    assert drawn("conv", sample_sides=(4, 8, 10)) == [
        ("conv_samples_4x4.png", False), ("conv_samples_8x8.png", True),
        ("conv_samples_10x10.png", False)]
    assert png_size(tmp_path / "conv_samples_10x10.png") == (8 + 302 + 24 + 302 + 8,
                                                              34 + 22 + 302 + 8)


def test_the_posterior_figures_prior_reference_is_its_seeded_pooled_draws():
    model = build_model("mlp", image_shape=(1, 28, 28), latent_dim=3, hidden=(8,))
    z = model.prior.pooled_draws(20_000, 3, model.encode)
    assert z.shape == (20_000,) and np.array_equal(z, model.prior.pooled_draws(20_000, 3, None))
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    # the standard normal's draw is numpy's, the one the posterior figure has drawn with
    assert np.array_equal(z, np.random.default_rng(3).standard_normal(20_000))
