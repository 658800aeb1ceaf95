"""`python -m vaepipe.sample`: prior grids, reconstructions, latent means and walks from a tiny
checkpoint alone, their shapes, seeded bytes, and one-line errors; the image decoding it uses."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaepipe.data.images import ImageInputError, image_files, load_image
from vaepipe.models.vae import build_model
from vaepipe.sample import main
from vaepipe.train.checkpoints import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
GAP = 2


def grid_size(rows, cols, h, w):
    """(width, height) of a tiled PNG with 2-pixel gaps."""
    return cols * (w + GAP) + GAP, rows * (h + GAP) + GAP


@pytest.fixture
def checkpoints(tmp_path):
    torch.manual_seed(0)
    grey = build_model("mlp", image_shape=(1, 28, 28), latent_dim=3, hidden=(16,))
    colour = build_model("conv", image_shape=(3, 32, 32), latent_dim=4, channels=(4, 8),
                         likelihood="discretized_logistic")
    paths = {}
    for name, model in (("grey", grey), ("colour", colour)):
        paths[name] = tmp_path / f"{name}.pt"
        save_checkpoint(paths[name], model, {"epoch": 1, "metrics": {}})
    return paths


@pytest.fixture
def pictures(tmp_path):
    """A folder of images in several modes and sizes (and a text file that is not one)."""
    folder = tmp_path / "pictures"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / "b.jpg")
    rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: white after compositing
    Image.fromarray(rgba, "RGBA").save(folder / "sub" / "c.png")
    Image.fromarray((rng.integers(0, 65536, (30, 30))).astype(np.uint16)).save(folder / "d.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(*args):
    return main([str(a) for a in args])


def test_prior_grid_has_the_model_shape_and_the_seed_fixes_the_bytes(checkpoints, tmp_path):
    out = tmp_path / "prior.png"
    assert run(checkpoints["grey"], "prior", "--n", 10, "--cols", 4, "--out", out) == 0
    with Image.open(out) as im:
        assert im.mode == "L" and im.size == grid_size(3, 4, 28, 28)
    again = tmp_path / "again.png"
    run(checkpoints["grey"], "prior", "--n", 10, "--cols", 4, "--out", again)
    assert out.read_bytes() == again.read_bytes()
    other = tmp_path / "other.png"
    run(checkpoints["grey"], "prior", "--n", 10, "--cols", 4, "--seed", 1, "--out", other)
    assert other.read_bytes() != out.read_bytes()
    colour = tmp_path / "colour.png"
    assert run(checkpoints["colour"], "prior", "--n", 8, "--out", colour) == 0
    with Image.open(colour) as im:
        assert im.mode == "RGB" and im.size == grid_size(1, 8, 32, 32)
    # a learned prior and two levels: z2 from the VampPrior, decoded through p(z1 | z2)
    hvae = build_model("mlp", image_shape=(1, 28, 28), latent_dim=3, hidden=(16,), levels=2,
                       prior={"name": "vampprior", "pseudo_inputs": 4})
    save_checkpoint(tmp_path / "hvae.pt", hvae, {"epoch": 1, "metrics": {}})
    assert run(tmp_path / "hvae.pt", "prior", "--n", 8, "--out", tmp_path / "hvae.png") == 0
    with Image.open(tmp_path / "hvae.png") as im:
        assert im.mode == "L" and im.size == grid_size(1, 8, 28, 28)


def test_reconstruct_encode_and_interpolate_read_files_and_folders(checkpoints, pictures,
                                                                   tmp_path):
    files = image_files([pictures])
    assert [f.name for f in files] == ["a.png", "b.jpg", "d.png", "c.png"]  # sorted, recursive
    recon = tmp_path / "recon.png"
    assert run(checkpoints["colour"], "reconstruct", pictures, "--cols", 3, "--out", recon) == 0
    with Image.open(recon) as im:  # 4 images, 3 a row: 2 row pairs (input row, output row)
        assert im.mode == "RGB" and im.size == grid_size(4, 3, 32, 32)
    latents = tmp_path / "latents.npz"
    assert run(checkpoints["grey"], "encode", pictures / "a.png", pictures / "sub",
               "--out", latents) == 0
    with np.load(latents, allow_pickle=False) as npz:
        assert npz["mu"].shape == npz["logvar"].shape == (2, 3)
        assert [Path(f).name for f in npz["files"]] == ["a.png", "c.png"]
    walk = tmp_path / "walk.png"
    assert run(checkpoints["grey"], "interpolate", pictures / "a.png", pictures / "b.jpg",
               "--steps", 5, "--out", walk) == 0
    with Image.open(walk) as im:  # the two images and 5 steps between them
        assert im.size == grid_size(1, 7, 28, 28)
    first = np.asarray(Image.open(walk))[GAP:GAP + 28, GAP:GAP + 28]
    np.testing.assert_array_equal(first, load_image(pictures / "a.png", 1, (28, 28))[0])


def test_bad_inputs_are_one_line_and_write_nothing(checkpoints, pictures, tmp_path, capsys):
    out = tmp_path / "never.png"
    cases = [
        ([checkpoints["grey"], "reconstruct", pictures / "notes.txt"], "not an image file"),
        ([checkpoints["grey"], "reconstruct", tmp_path / "missing"], "no such file or folder"),
        ([tmp_path / "missing.pt", "prior"], "missing.pt: not found"),
        ([checkpoints["grey"], "interpolate", pictures / "a.png", pictures / "b.jpg",
          "--steps", 1], "--steps must be from 2 to 1,000"),
    ]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cases.append(([checkpoints["grey"], "encode", tmp_path / "broken.png"],
                  "broken.png: not a readable image"))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append(([checkpoints["grey"], "encode", empty], "no image files in this folder"))
    for args, message in cases:
        assert run(*args, "--out", out) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_images_are_decoded_one_deterministic_way(pictures):
    # transparent pixels are white; 16-bit levels are scaled; the crop is centred
    assert (load_image(pictures / "sub" / "c.png", 3, (32, 32)) == 255).all()
    sixteen = load_image(pictures / "d.png", 1, (30, 30))
    raw = np.asarray(Image.open(pictures / "d.png"), dtype=np.float64)
    np.testing.assert_allclose(sixteen[0], np.round(raw * 255 / 65535), atol=1)
    wide = np.zeros((10, 30), np.uint8)
    wide[:, 10:20] = 200  # the centre square of a 10 x 30 image
    path = pictures / "wide.png"
    Image.fromarray(wide).save(path)
    assert (load_image(path, 1, (10, 10)) == 200).all()
    # EXIF orientation 6 (turn 90 degrees clockwise to view): a 10 x 30 file whose left half is
    # white is seen 30 x 10 with its top half white, and the centre crop shows that edge
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = np.zeros((10, 30), np.uint8)
    sideways[:, :15] = 255
    Image.fromarray(sideways).save(pictures / "rotated.png", exif=exif)
    seen = load_image(pictures / "rotated.png", 1, (10, 10))[0]
    assert (seen[:5] == 255).all() and (seen[5:] == 0).all()
    with pytest.raises(ImageInputError, match="not a readable image"):
        (pictures / "bad.png").write_bytes(b"garbage")
        load_image(pictures / "bad.png", 1, (28, 28))


def test_the_command_runs_as_a_module(checkpoints, tmp_path):
    out = tmp_path / "cli.png"
    proc = subprocess.run([sys.executable, "-m", "vaepipe.sample", str(checkpoints["grey"]),
                           "prior", "--n", "4", "--cols", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"prior: {out}"
    with Image.open(out) as im:
        assert im.size == grid_size(2, 2, 28, 28)
