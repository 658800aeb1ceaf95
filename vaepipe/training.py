"""One training loop for every VAE (train-mlp, train-conv and the beta sweep call ``fit``).

The split's uint8 arrays are moved to the device once; each epoch a seeded permutation shuffles
them and contiguous slices become batches, converted to float on the device. There is no
DataLoader and no per-image Python work, which is where the reference recipe spends its time.
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from vaepipe.config import TrainConfig
from vaepipe.io import atomic_path
from vaepipe.models import VAE, build_model
from vaepipe.objective import kl_weight, vae_loss

CHECKPOINT_FORMAT = 1
EVAL_BATCH = 1000


class DeviceError(RuntimeError):
    """The requested device is not available on this machine."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class CheckpointError(ValueError):
    """A checkpoint this code cannot load: unknown format or kind, or mismatched shapes."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": has_mps}
    if name not in available:
        raise DeviceError(f"device must be one of auto, cpu, cuda, mps; got {name!r}")
    if not available[name]:
        found = ", ".join(k for k, ok in available.items() if ok)
        raise DeviceError(f"device {name!r} was requested (params.yaml: device) but is not "
                          f"available on this machine; available: {found}. "
                          f"Set device: auto or one of those.")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device.type


def to_unit_float(x: torch.Tensor, dequantize: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1].

    With ``dequantize`` each pixel gets U[0, 1) noise before scaling by 1/256, so the data
    have a density on [0, 1) (Theis et al. 2016); seed 004 does the same with /255 and a clip.
    """
    x = x.float()
    if dequantize:
        noise = torch.rand(x.shape, generator=generator, device=x.device)
        return (x + noise).div_(256.0)
    return x.div_(255.0)


def scheduled_kl_weight(cfg: TrainConfig, epoch: int, beta: float) -> float:
    """The KL weight of 1-based ``epoch`` under ``cfg``'s schedule towards ``beta``."""
    return kl_weight(cfg.kl_schedule, epoch, cfg.epochs, beta, cfg.warmup_epochs, cfg.cycles,
                     cfg.cycle_ratio)


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    # fused=True: one kernel for the whole update; on a 2-core CPU it is ~1.4x faster per
    # MLP step than the default foreach implementation (same algorithm, same numbers class).
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


@torch.no_grad()
def evaluate_elbo(model: VAE, images: torch.Tensor, beta: float, cfg: TrainConfig,
                  dequantize: bool = False, seed: int = 0) -> dict[str, float]:
    """Mean loss (at KL weight ``beta``), recon, KL and NELBO over uint8 ``images``.

    Uses one posterior sample per image from a generator seeded with ``seed``, so the same
    weights always give the same numbers (comparable across epochs).
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=images.device).manual_seed(seed)
    sums = torch.zeros(2, dtype=torch.float64, device=images.device)
    for i in range(0, len(images), EVAL_BATCH):
        x = to_unit_float(images[i:i + EVAL_BATCH], dequantize, gen)
        logits, mu, logvar = model(x, gen)
        terms = vae_loss(logits, x, mu, logvar, 1.0, cfg.likelihood, cfg.obs_std)
        sums += torch.stack([terms.recon, terms.kl]).double() * len(x)
    model.train(was_training)
    recon, kl = (sums / len(images)).tolist()
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl, "nelbo": recon + kl}


def save_checkpoint(path: Path, model: VAE, epoch: int, metrics: dict, meta: dict) -> None:
    """Write a self-describing checkpoint atomically (loadable with weights_only=True)."""
    ckpt = {"format": CHECKPOINT_FORMAT, "kind": model.kind, "model_args": model.model_args,
            "state_dict": model.state_dict(), "epoch": epoch, "metrics": metrics, **meta}
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        # A file object, not a path: torch.save names the zip's records after the file, and
        # the temporary name would make equal weights give different bytes (and DVC hashes).
        torch.save(ckpt, fh)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    missing: str = "not found"):
    """``torch.load(weights_only=True)``: no pickled code runs. A missing or unreadable file
    raises :class:`CheckpointError` naming it (``missing`` says what to do when it is absent)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {missing}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path}: not a loadable checkpoint ({reason})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[VAE, dict]:
    """Rebuild a model from its checkpoint alone; returns ``(model in eval mode, checkpoint)``.

    ``torch.load(weights_only=True)`` refuses pickled code. A file that is not a checkpoint of
    :data:`CHECKPOINT_FORMAT`, names an unknown model kind or holds weights whose shapes do not
    fit its own ``model_args`` raises :class:`CheckpointError` naming the file.
    """
    ckpt = read_checkpoint(path, device)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: checkpoint format {found!r} is not supported; this "
                              f"code reads format {CHECKPOINT_FORMAT} (retrain, or use the "
                              f"version of vaepipe that wrote it)")
    try:
        model = build_model(ckpt["kind"], **ckpt["model_args"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model ({exc})") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path}: weights do not fit a {ckpt['kind']} model with "
                              f"{ckpt['model_args']} ({reason})") from None
    return model.to(device).eval(), ckpt


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best: dict = field(default_factory=dict)

    @property
    def train_seconds(self) -> float:
        return sum(h["seconds"] for h in self.history)


def fit(model: VAE, train_images: np.ndarray | torch.Tensor, val_images: np.ndarray | torch.Tensor,
        cfg: TrainConfig, beta: float, seed: int, device: torch.device,
        checkpoint_dir: str | Path | None = None, meta: dict | None = None,
        dequantize: bool = False, progress: bool = True,
        on_epoch: Callable[[int, VAE, dict], None] | None = None,
        on_batch: Callable[[int, int, VAE], None] | None = None) -> FitResult:
    """Train ``model`` on uint8 image arrays (N, C, H, W) and validate every epoch.

    The KL weight follows ``cfg.kl_schedule`` towards ``beta``. With ``checkpoint_dir``,
    writes ``epoch_01.pt``, ``best.pt`` (lowest validation loss at the *target* weight
    ``beta``, so warm-up epochs cannot win on a discounted KL) and ``final.pt``; ``meta`` is
    stored in each. ``on_batch(epoch, batch, model)`` runs after every optimizer step (batch
    is 1-based; the model is in training mode and must be left so), ``on_epoch(epoch, model,
    row)`` after each epoch's validation. A non-finite loss raises :class:`TrainingDiverged` naming the epoch and
    batch; checkpoints already written are kept, and nothing from the bad epoch is saved.
    """
    torch.manual_seed(seed)
    model.to(device).train()
    meta = meta or {}
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    train_x = torch.as_tensor(train_images).to(device)
    val_x = torch.as_tensor(val_images).to(device)
    n, bs = len(train_x), cfg.batch_size
    n_batches = math.ceil(n / bs)
    opt = make_optimizer(cfg, model.parameters())
    # what the optimizer really is, read back from it (not the config), for the checkpoints
    group = opt.param_groups[0]
    meta = {**meta, "optimizer": {"class": type(opt).__name__, "lr": group["lr"],
                                  "weight_decay": group["weight_decay"]}}
    gen = torch.Generator(device=device).manual_seed(seed)
    result = FitResult()
    best_loss = math.inf

    for epoch in range(1, cfg.epochs + 1):
        weight = scheduled_kl_weight(cfg, epoch, beta)
        _sync(device)
        start = time.perf_counter()
        shuffled = train_x[torch.randperm(n, generator=gen, device=device)]
        # Per-batch (loss, recon, kl) kept on the device: no host sync inside the loop.
        stats = torch.empty(n_batches, 3, device=device)
        bar = tqdm(total=n, desc=f"{model.kind} epoch {epoch}/{cfg.epochs}", unit="img",
                   disable=not progress, leave=False)
        for b in range(n_batches):
            x = to_unit_float(shuffled[b * bs:(b + 1) * bs], dequantize, gen)
            logits, mu, logvar = model(x, gen)
            terms = vae_loss(logits, x, mu, logvar, weight, cfg.likelihood, cfg.obs_std)
            opt.zero_grad(set_to_none=True)
            terms.loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            stats[b] = torch.stack(terms).detach()
            bar.update(len(x))
            if on_batch is not None:
                on_batch(epoch, b + 1, model)
        bar.close()
        _sync(device)
        seconds = time.perf_counter() - start

        bad = ~torch.isfinite(stats).all(dim=1)
        if bad.any():
            first = int(bad.nonzero()[0])
            raise TrainingDiverged(
                f"non-finite loss at epoch {epoch}, batch {first + 1} of {n_batches} "
                f"(loss={stats[first, 0].item()}); lower the learning rate (lr) or enable "
                f"gradient clipping (grad_clip > 0). Checkpoints from earlier epochs are kept.")
        sizes = torch.full((n_batches,), float(bs), device=device)
        sizes[-1] = n - bs * (n_batches - 1)
        train_means = ((stats * sizes[:, None]).sum(0) / n).tolist()
        val = evaluate_elbo(model, val_x, beta, cfg, dequantize, seed)
        row = {"epoch": epoch, "beta": weight, "lr": opt.param_groups[0]["lr"],
               "train_loss": train_means[0], "train_recon": train_means[1],
               "train_kl": train_means[2], "val_loss": val["loss"], "val_recon": val["recon"],
               "val_kl": val["kl"], "val_nelbo": val["nelbo"], "seconds": seconds,
               "images_per_second": n / seconds}
        result.history.append(row)
        if not all(math.isfinite(v) for v in val.values()):
            raise TrainingDiverged(f"non-finite validation loss at epoch {epoch}: {val}; "
                                   f"lower the learning rate (lr) or enable gradient clipping.")
        val_metrics = {f"val_{k}": v for k, v in val.items()}
        if ckpt_dir is not None and epoch == 1:
            save_checkpoint(ckpt_dir / "epoch_01.pt", model, epoch, val_metrics, meta)
        if val["loss"] < best_loss:
            best_loss, result.best_epoch, result.best = val["loss"], epoch, val_metrics
            if ckpt_dir is not None:
                save_checkpoint(ckpt_dir / "best.pt", model, epoch, val_metrics, meta)
        if progress:
            tqdm.write(f"{model.kind} epoch {epoch:3d}: kl weight {weight:.3f}  "
                       f"train {train_means[0]:.2f}  val nelbo {val['nelbo']:.2f} "
                       f"(recon {val['recon']:.2f}, kl {val['kl']:.2f})  "
                       f"{n / seconds:,.0f} img/s")
        if on_epoch is not None:
            on_epoch(epoch, model, row)
    if ckpt_dir is not None:
        save_checkpoint(ckpt_dir / "final.pt", model, cfg.epochs, val_metrics, meta)
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def summarize(result: FitResult, device: torch.device, model: VAE) -> dict:
    """The metrics JSON of a training run."""
    last = result.history[-1]
    return {
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best["val_loss"],
        "best_val_nelbo": result.best["val_nelbo"],
        "best_val_recon": result.best["val_recon"],
        "best_val_kl": result.best["val_kl"],
        "final_val_nelbo": last["val_nelbo"],
        "epochs": last["epoch"],
        "train_seconds": result.train_seconds,
        "images_per_second": float(np.mean([h["images_per_second"] for h in result.history])),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }


def write_history(path: str | Path, result: FitResult) -> None:
    import pandas as pd
    with atomic_path(path) as tmp:
        pd.DataFrame(result.history).to_csv(tmp, index=False, float_format="%.6g")

