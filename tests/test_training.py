"""The training loop: determinism, checkpoints, the NaN guard, devices, histories."""

import numpy as np
import pytest
import torch

from vaepipe.config import ConvConfig, MLPConfig
from vaepipe.models import MLPVAE, build_model
from vaepipe.training import (DeviceError, TrainingDiverged, fit, load_checkpoint,
                              resolve_device, summarize, to_unit_float)

CPU = torch.device("cpu")


def tiny_images(n, shape=(1, 28, 28), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def small_mlp_cfg(**kw):
    base = dict(epochs=2, batch_size=32, lr=1e-3, kl_schedule="linear", warmup_epochs=2)
    return MLPConfig(hidden=(32,), latent_dim=4, **{**base, **kw})


def train_once(tmp_path, name, cfg=None, seed=7):
    torch.manual_seed(seed)
    model = MLPVAE((1, 28, 28), latent_dim=4, hidden=(32,))
    result = fit(model, tiny_images(100), tiny_images(40, seed=1), cfg or small_mlp_cfg(),
                 beta=1.0, seed=seed, device=CPU, checkpoint_dir=tmp_path / name,
                 meta={"params": {"note": "tiny"}}, progress=False)
    return model, result


def test_same_params_give_bit_identical_checkpoints_and_metrics(tmp_path):
    _, a = train_once(tmp_path, "a")
    _, b = train_once(tmp_path, "b")
    for name in ("epoch_01.pt", "best.pt", "final.pt"):
        ca = torch.load(tmp_path / "a" / name, weights_only=True)
        cb = torch.load(tmp_path / "b" / name, weights_only=True)
        assert ca["state_dict"].keys() == cb["state_dict"].keys()
        for key in ca["state_dict"]:
            assert torch.equal(ca["state_dict"][key], cb["state_dict"][key]), (name, key)
        assert ca["metrics"] == cb["metrics"]
    for name in ("epoch_01.pt", "best.pt", "final.pt"):  # the files too, byte for byte
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    timing = {"seconds", "images_per_second"}
    strip = [{k: v for k, v in row.items() if k not in timing} for row in a.history]
    assert strip == [{k: v for k, v in row.items() if k not in timing} for row in b.history]
    # a different seed really changes the result (the test above can fail)
    _, c = train_once(tmp_path, "c", seed=8)
    assert c.history[-1]["val_nelbo"] != a.history[-1]["val_nelbo"]


def test_checkpoints_describe_themselves(tmp_path):
    model, result = train_once(tmp_path, "run")
    ckpt_model, ckpt = load_checkpoint(tmp_path / "run" / "final.pt")
    assert ckpt["kind"] == "mlp" and ckpt["epoch"] == 2
    assert ckpt["model_args"]["hidden"] == [32] and ckpt["params"] == {"note": "tiny"}
    assert ckpt["metrics"]["val_nelbo"] == pytest.approx(result.history[-1]["val_nelbo"])
    model.eval()
    z = torch.randn(3, 4)
    assert torch.equal(ckpt_model.decode(z), model.decode(z))
    first = torch.load(tmp_path / "run" / "epoch_01.pt", weights_only=True)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert first["epoch"] == 1 and best["epoch"] == result.best_epoch
    assert best["metrics"] == result.best


def test_history_columns_and_values(tmp_path):
    _, result = train_once(tmp_path, "h")
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert [r["beta"] for r in result.history] == pytest.approx([0.5, 1.0])  # warm-up of 2
    for row in result.history:
        assert row["val_nelbo"] == pytest.approx(row["val_recon"] + row["val_kl"])
        assert row["val_loss"] == pytest.approx(row["val_recon"] + 1.0 * row["val_kl"])
        assert row["val_kl"] > 0 and row["images_per_second"] > 0
        # random pixels: BCE around 784 * E[H] nats; a sanity range, not a golden value
        assert 400 < row["train_recon"] < 700
    summary = summarize(result, CPU, MLPVAE((1, 28, 28), latent_dim=4, hidden=(32,)))
    assert summary["best_epoch"] in (1, 2) and summary["epochs"] == 2
    assert summary["device"].startswith("cpu") and summary["torch_version"] == torch.__version__


class PoisonedMLP(MLPVAE):
    """Decodes NaN from the given (epoch, batch) on, as a diverging model would."""

    def __init__(self, at_call, **kw):
        super().__init__(**kw)
        self.calls, self.at_call = 0, at_call

    def decode(self, z):
        out = super().decode(z)
        if self.training:
            self.calls += 1
            if self.calls >= self.at_call:
                return out * float("nan")
        return out


def test_nan_guard_names_epoch_and_batch_and_keeps_good_checkpoints(tmp_path):
    # 100 images at batch 32 -> 4 batches per epoch; poison batch 3 of epoch 2 (call 7)
    model = PoisonedMLP(7, image_shape=(1, 28, 28), latent_dim=4, hidden=(32,))
    cfg = small_mlp_cfg(epochs=3)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 3 of 4.*lower the learning "
                                               r"rate \(lr\).*grad_clip"):
        fit(model, tiny_images(100), tiny_images(40), cfg, 1.0, 0, CPU,
            checkpoint_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "epoch_01.pt"]
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in best["state_dict"].values())


def test_gradient_clipping_and_adamw_run(tmp_path):
    cfg = small_mlp_cfg(epochs=1, optimizer="adamw", weight_decay=1e-5, grad_clip=1.0,
                        kl_schedule="cyclical", cycles=1)
    model = MLPVAE((1, 28, 28), latent_dim=4, hidden=(32,))
    result = fit(model, tiny_images(64), tiny_images(16), cfg, 0.5, 0, CPU, progress=False)
    assert result.history[0]["beta"] == 0.0  # cyclical starts each cycle at 0


def test_conv_with_gaussian_likelihood_on_cifar_shape():
    cfg = ConvConfig(channels=(8, 16, 16), latent_dim=8, likelihood="gaussian", obs_std=0.1,
                     epochs=1, batch_size=16)
    model = build_model("conv", image_shape=(3, 32, 32), latent_dim=8, channels=(8, 16, 16))
    result = fit(model, tiny_images(48, (3, 32, 32)), tiny_images(16, (3, 32, 32)), cfg,
                 0.001, 0, CPU, progress=False)
    row = result.history[0]
    assert np.isfinite(row["val_nelbo"]) and row["val_kl"] > 0


def test_dequantize_maps_into_unit_interval_without_clipping():
    x = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    y = to_unit_float(x, dequantize=True, generator=gen)
    assert torch.all(y >= x.float() / 256) and torch.all(y < (x.float() + 1) / 256)
    assert torch.equal(to_unit_float(x), x.float() / 255)


def test_auto_device_and_missing_device_error():
    assert resolve_device("cpu") == CPU
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert resolve_device("auto").type == "cuda"
    elif not torch.backends.mps.is_available():
        assert resolve_device("auto") == CPU
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match=r"device 'cuda' was requested \(params.yaml: "
                                              r"device\) but is not available.*available: cpu"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(DeviceError, match="device 'mps' was requested"):
            resolve_device("mps")
    with pytest.raises(DeviceError, match="device must be one of auto, cpu, cuda, mps"):
        resolve_device("tpu")


def test_best_checkpoint_uses_target_weight_not_warmup_weight(tmp_path):
    # during a long warm-up the scheduled loss is discounted; best must be judged at beta
    cfg = small_mlp_cfg(epochs=3, warmup_epochs=3)
    _, result = train_once(tmp_path, "w", cfg)
    losses = [r["val_recon"] + r["val_kl"] for r in result.history]
    assert result.best_epoch == 1 + int(np.argmin(losses))
