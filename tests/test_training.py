"""The training loop: determinism, checkpoints, the NaN guard, devices, histories."""

import numpy as np
import pytest
import torch

from vaepipe.config import ConvConfig, MLPConfig
from vaepipe.models.batches import to_unit_float
from vaepipe.models.vae import MLPVAE, build_model
from vaepipe.train.checkpoints import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint
from vaepipe.train.device import DeviceError, resolve_device
from vaepipe.train.loop import TrainingDiverged, fit, make_optimizer, summarize

CPU = torch.device("cpu")


def tiny_images(n, shape=(1, 28, 28), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def small_mlp_cfg(**kw):
    base = dict(epochs=2, batch_size=32, lr=1e-3, kl_schedule="linear", warmup_epochs=2)
    return MLPConfig(hidden=(32,), latent_dim=4, **{**base, **kw})


def train_once(tmp_path, name, cfg=None, seed=7, beta=1.0):
    torch.manual_seed(seed)
    model = MLPVAE((1, 28, 28), latent_dim=4, hidden=(32,))
    result = fit(model, tiny_images(100), tiny_images(40, seed=1), cfg or small_mlp_cfg(),
                 beta=beta, seed=seed, device=CPU, checkpoint_dir=tmp_path / name,
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


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _fit_from_same_init(**cfg_changes):
    torch.manual_seed(3)
    model = MLPVAE((1, 28, 28), latent_dim=4, hidden=(32,))
    start = _weights(model)
    cfg = small_mlp_cfg(epochs=1, kl_schedule="constant", **cfg_changes)
    result = fit(model, tiny_images(64), tiny_images(16), cfg, 1.0, 0, CPU, progress=False)
    return start, _weights(model), result


def test_gradient_clipping_is_applied(monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm, **kw: calls.append(max_norm) or real(
                            params, max_norm, **kw))
    start, plain, _ = _fit_from_same_init()
    assert calls == []  # grad_clip 0 is off
    _, clipped, _ = _fit_from_same_init(grad_clip=1e-7)
    assert calls == [1e-7, 1e-7]  # 64 images at batch 32: two steps, each clipped
    # with every gradient clipped to norm 1e-7, Adam's steps shrink towards eps: the weights
    # move far less than unclipped (so a loop that ignored grad_clip would fail here)
    assert (clipped - start).norm() < 0.2 * (plain - start).norm()


def test_adamw_decouples_weight_decay_from_adam():
    _, adam, adam_run = _fit_from_same_init(optimizer="adam", weight_decay=0.5, lr=0.05)
    _, adamw, adamw_run = _fit_from_same_init(optimizer="adamw", weight_decay=0.5, lr=0.05)
    assert not torch.equal(adam, adamw)  # the same weight decay acts differently
    assert adam_run.history[0]["lr"] == adamw_run.history[0]["lr"] == 0.05


def test_checkpoints_record_the_optimizer_that_ran(tmp_path):
    cfg = small_mlp_cfg(epochs=1, optimizer="adamw", weight_decay=1e-5, lr=2e-3)
    _, _ = train_once(tmp_path, "opt", cfg)
    ckpt = torch.load(tmp_path / "opt" / "final.pt", weights_only=True)
    assert ckpt["optimizer"] == {"class": "AdamW", "lr": 2e-3, "weight_decay": 1e-5}
    assert make_optimizer(small_mlp_cfg(), [torch.zeros(1, requires_grad=True)]
                                   ).__class__ is torch.optim.Adam


def test_cyclical_schedule_starts_each_cycle_at_zero():
    cfg = small_mlp_cfg(epochs=4, kl_schedule="cyclical", cycles=2, cycle_ratio=0.5)
    model = MLPVAE((1, 28, 28), latent_dim=4, hidden=(32,))
    result = fit(model, tiny_images(64), tiny_images(16), cfg, 0.5, 0, CPU, progress=False)
    assert [r["beta"] for r in result.history] == [0.0, 0.5, 0.0, 0.5]


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
    y = to_unit_float(x, "dequantized", generator=gen)
    assert torch.all(y >= x.float() / 256) and torch.all(y < (x.float() + 1) / 256)
    assert torch.equal(to_unit_float(x), x.float() / 255)


@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (False, True, "mps"),
                                              (False, False, "cpu")])
def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    # availability is faked, so every assertion runs on any machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == CPU


def test_missing_device_is_an_error_naming_the_key_and_what_exists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"device 'cuda' was requested \(params.yaml: "
                                          r"device\) but is not available.*available: cpu\."):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="device 'mps' was requested"):
        resolve_device("mps")
    with pytest.raises(DeviceError, match="device must be one of auto, cpu, cuda, mps"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(DeviceError, match="available: cpu, mps"):
        resolve_device("cuda")


def test_best_checkpoint_uses_target_weight_not_warmup_weight(tmp_path):
    # During a warm-up the scheduled loss discounts the KL; best.pt must be judged at beta.
    # beta = 4 with a 3-epoch warm-up: the two rules pick different epochs here (checked
    # first, so this test can tell them apart).
    beta = 4.0
    _, result = train_once(tmp_path, "w", small_mlp_cfg(epochs=3, warmup_epochs=3), beta=beta)
    at_target = [r["val_recon"] + beta * r["val_kl"] for r in result.history]
    at_warmup = [r["val_recon"] + r["beta"] * r["val_kl"] for r in result.history]
    assert int(np.argmin(at_target)) != int(np.argmin(at_warmup))
    assert result.best_epoch == 1 + int(np.argmin(at_target))
    assert torch.load(tmp_path / "w" / "best.pt", weights_only=True)["epoch"] == result.best_epoch


class NaNWhenEvaluating(MLPVAE):
    """Trains normally but decodes NaN in eval mode, as a broken validation pass would."""

    def decode(self, z):
        out = super().decode(z)
        return out if self.training else out * float("nan")


def test_nan_guard_on_the_validation_loss(tmp_path):
    model = NaNWhenEvaluating((1, 28, 28), latent_dim=4, hidden=(32,))
    with pytest.raises(TrainingDiverged, match="non-finite validation loss at epoch 1"):
        fit(model, tiny_images(64), tiny_images(16), small_mlp_cfg(), 1.0, 0, CPU,
            checkpoint_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing saved from the bad epoch


def test_on_batch_hook_sees_every_step_in_training_mode():
    seen = []
    model = MLPVAE((1, 28, 28), latent_dim=4, hidden=(32,))
    fit(model, tiny_images(70), tiny_images(16), small_mlp_cfg(epochs=2), 1.0, 0, CPU,
        progress=False, on_batch=lambda e, b, m: seen.append((e, b, m.training)))
    assert seen == [(e, b, True) for e in (1, 2) for b in (1, 2, 3)]  # 70 at 32: 3 batches


def test_checkpoint_of_unknown_format_or_shape_is_refused_by_name(tmp_path):
    _, _ = train_once(tmp_path, "c", small_mlp_cfg(epochs=1))
    good = torch.load(tmp_path / "c" / "final.pt", weights_only=True)
    future = tmp_path / "future.pt"
    torch.save({**good, "format": CHECKPOINT_FORMAT + 1}, future)
    with pytest.raises(CheckpointError, match=rf"future.pt: checkpoint format "
                                              rf"{CHECKPOINT_FORMAT + 1} is not supported"):
        load_checkpoint(future)
    legacy = tmp_path / "legacy.pt"
    torch.save({k: v for k, v in good.items() if k != "format"}, legacy)
    with pytest.raises(CheckpointError, match="legacy.pt: checkpoint format None"):
        load_checkpoint(legacy)
    kind = tmp_path / "kind.pt"
    torch.save({**good, "kind": "transformer"}, kind)
    with pytest.raises(CheckpointError,
                       match="kind.pt: holds a 'transformer' network; expected 'mlp' or 'conv'"):
        load_checkpoint(kind)
    shapes = tmp_path / "shapes.pt"
    torch.save({**good, "model_args": {**good["model_args"], "latent_dim": 8}}, shapes)
    with pytest.raises(CheckpointError, match="shapes.pt: weights do not fit a mlp model"):
        load_checkpoint(shapes)
    with pytest.raises(CheckpointError, match="missing.pt: not found"):
        load_checkpoint(tmp_path / "missing.pt")


class _RunsCode:
    """Pickles as a call to os.system: what a hostile checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_carrying_code_is_refused_and_the_code_does_not_run(tmp_path):
    _, _ = train_once(tmp_path, "h", small_mlp_cfg(epochs=1))
    good = torch.load(tmp_path / "h" / "final.pt", weights_only=True)
    marker = tmp_path / "payload-ran"
    hostile = tmp_path / "hostile.pt"
    torch.save({**good, "metrics": _RunsCode(marker)}, hostile)
    with pytest.raises(CheckpointError, match="hostile.pt: not a loadable checkpoint"):
        load_checkpoint(hostile)
    assert not marker.exists()
    # the payload is real: an unrestricted load does run it
    torch.load(hostile, weights_only=False)
    assert marker.exists()
