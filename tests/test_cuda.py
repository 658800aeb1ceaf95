"""The CUDA path, on a machine with a GPU: the default model shapes train a step and evaluate a
batch on ``cuda``, and the feature classifier does the same. Skipped, saying why, without one."""
import math

import numpy as np
import pytest
import torch

from vaepipe.evaluate.classifier import Classifier, accuracy, train_classifier
from vaepipe.config import ConvConfig, MLPConfig
from vaepipe.models.vae import build_model, model_args
from vaepipe.train.device import resolve_device
from vaepipe.train.loop import fit
from vaepipe.train.objective import evaluate_elbo

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device here (torch.cuda.is_available() is False); on a GPU machine this "
           "checks the cuda path")


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (128, 1, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, 128).astype(np.int64))


@pytest.mark.parametrize("kind, cfg", [("mlp", MLPConfig(epochs=1, batch_size=128)),
                                       ("conv", ConvConfig(epochs=1, batch_size=128))])
def test_one_training_step_and_one_evaluation_batch_on_cuda(images, kind, cfg):
    device = resolve_device("auto")
    assert device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(kind, image_shape=(1, 28, 28), **model_args(kind, cfg))
    before = [p.detach().clone() for p in model.parameters()]
    train, _ = images
    result = fit(model, train, train[:64], cfg, 1.0, 0, device, progress=False)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert any(not torch.equal(a.to(device), b) for a, b in zip(before, model.parameters()))
    row = result.history[0]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_nelbo"])
    batch = torch.as_tensor(train[:100]).to(device)
    scores = evaluate_elbo(model, batch, 1.0)
    assert scores["nelbo"] == pytest.approx(scores["recon"] + scores["kl"])
    assert 0 < scores["recon"] and 0 <= scores["kl"] and math.isfinite(scores["nelbo"])


def test_the_feature_classifier_trains_and_predicts_on_cuda(images):
    device = resolve_device("cuda")
    torch.manual_seed(0)
    model = Classifier((1, 28, 28), 10, (32, 64), 128)
    history = train_classifier(model, *images, 1, 128, 1e-3, 0.0, 0, device, log=None)
    assert math.isfinite(history[0]["train_loss"])
    assert next(model.parameters()).device.type == "cuda"
    on_gpu = accuracy(model, *images, device)
    with torch.no_grad():
        features = model.features(torch.as_tensor(images[0][:8]).to(device).float() / 255)
    assert features.shape == (8, 128) and features.device.type == "cuda"
    # the same weights predict the same classes on the CPU, up to near-ties (2 of 128 images)
    on_cpu = accuracy(model.cpu(), *images, torch.device("cpu"))
    assert abs(on_gpu - on_cpu) <= 2 / 128
