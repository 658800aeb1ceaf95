"""The FID feature classifier: shapes, a seeded loop that learns, self-describing checkpoints."""
import numpy as np
import pytest
import torch

from vaepipe.evaluate.classifier import Classifier, accuracy, load_classifier, train_classifier
from vaepipe.train.checkpoints import CheckpointError, save_checkpoint


def quadrant_data(n, seed=0):
    """1x8x8 uint8 images whose class (0-3) is the bright quadrant, over noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n).astype(np.int64)
    images = rng.integers(0, 120, (n, 1, 8, 8)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 2)
        images[i, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 120
    return images, labels


def test_shapes_and_features_layer():
    model = Classifier((1, 28, 28), 10, (16, 32), 64)
    x = torch.rand(5, 1, 28, 28)
    assert model(x).shape == (5, 10)
    assert model.features(x).shape == (5, 64) and (model.features(x) >= 0).all()  # after ReLU
    assert Classifier((3, 32, 32), 10, (8, 8, 8), 16)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="classifier.channels: 5 conv\\+pool blocks shrink"):
        Classifier((1, 28, 28), 10, (4, 4, 4, 4, 4), 8)


def test_training_learns_and_is_seeded():
    x, y = quadrant_data(600)
    xt, yt = quadrant_data(200, seed=1)
    cpu = torch.device("cpu")
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Classifier((1, 8, 8), 4, (8,), 16)
        before = accuracy(model, xt, yt, cpu)
        history = train_classifier(model, x, y, 3, 32, 1e-2, 0.0, seed=5, device=cpu, log=None)
        runs.append((model, history))
    model, history = runs[0]
    assert before < 0.5 and accuracy(model, xt, yt, cpu) > 0.95
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["train_accuracy"] > 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for a, b in zip(runs[0][0].state_dict().values(), runs[1][0].state_dict().values()):
        assert torch.equal(a, b)  # bit for bit on the CPU


def test_checkpoint_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    model = Classifier((1, 8, 8), 4, (8,), 16).eval()
    path = tmp_path / "classifier.pt"
    save_checkpoint(path, model, {"epochs": 3, "metrics": {"test_accuracy": 0.5}})
    raw = torch.load(path, weights_only=True)
    assert raw["kind"] == "classifier" and raw["model_args"]["features"] == 16
    loaded, ckpt = load_classifier(path)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded.features(x), model.features(x)) and not loaded.training
    assert ckpt["metrics"]["test_accuracy"] == 0.5

    with pytest.raises(CheckpointError, match="nowhere.pt: not found"):
        load_classifier(tmp_path / "nowhere.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a loadable checkpoint"):
        load_classifier(tmp_path / "junk.pt")
    torch.save({"format": 1, "kind": "mlp", "state_dict": {}}, tmp_path / "vae.pt")
    with pytest.raises(CheckpointError,
                       match="vae.pt: holds a 'mlp' network; expected 'classifier'"):
        load_classifier(tmp_path / "vae.pt")
