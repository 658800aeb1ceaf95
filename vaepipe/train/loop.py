"""One training loop for every VAE (train-mlp, train-conv and the beta sweep call ``fit``).

The split's uint8 arrays are moved to the device once; each epoch a seeded permutation shuffles
them and contiguous slices become batches, converted to float on the device. There is no
DataLoader and no per-image Python work, which is where the reference recipe spends its time.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from vaepipe.config import TrainConfig, warmup_end
from vaepipe.io import atomic_path
from vaepipe.models.batches import to_unit_float
from vaepipe.models.vae import VAE
from vaepipe.train.checkpoints import CHECKPOINTS, save_checkpoint
from vaepipe.train.device import device_name
from vaepipe.train.errors import TrainingDiverged
from vaepipe.train.resume import (Resume, file_tensors, history_rows, restore_files,
                                  set_rng_state)
from vaepipe.train.objective import evaluate_elbo, kl_weight, vae_loss

def scheduled_kl_weight(cfg: TrainConfig, epoch: int, beta: float) -> float:
    """The KL weight of 1-based ``epoch`` under ``cfg``'s schedule towards ``beta``."""
    return kl_weight(cfg.kl_schedule, epoch, cfg.epochs, beta, cfg.warmup_epochs, cfg.cycles,
                     cfg.cycle_ratio)


class AdamNormGrad(torch.optim.Adam):
    """Adam on normalised gradients: before each step every parameter's gradient is divided by
    its L2 norm (plus 1e-7), as the VampPrior authors' optimizer does (Tomczak & Welling 2018).
    Their step adds Adam's epsilon before the bias correction of the second moment, PyTorch's
    after it; with eps 1e-8 the two differ in the first steps only, by far less than a
    rounding of the data."""

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("AdamNormGrad normalises the gradients already computed: no closure")
        grads = [p.grad for group in self.param_groups for p in group["params"]
                 if p.grad is not None]
        if grads:
            norms = torch._foreach_norm(grads)
            torch._foreach_add_(norms, 1e-7)
            torch._foreach_div_(grads, norms)
        return super().step()


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
              "adamnormgrad": AdamNormGrad}


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    cls = OPTIMIZERS[cfg.optimizer]
    # fused=True: one kernel for the whole update instead of one per tensor (the same
    # algorithm; bench/README.md has the measured speed-up)
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best: dict = field(default_factory=dict)
    patience: int = 0    # early stopping (0: off)
    warmup_end: int = 0  # the last epoch of the KL warm-up: epochs before it are not counted

    @property
    def stopped_early(self) -> bool:
        """Whether more than ``patience`` epochs in a row, from the warm-up's last epoch on,
        brought no better validation loss: training ends here. The VampPrior code's rule: its
        counter restarts at every better epoch and at every epoch before the warm-up's end."""
        done = len(self.history)
        return (self.patience > 0
                and done - max(self.best_epoch, self.warmup_end - 1) > self.patience)

    @property
    def train_seconds(self) -> float:
        return sum(h["seconds"] for h in self.history)


def fit(model: VAE, train_images: np.ndarray | torch.Tensor, val_images: np.ndarray | torch.Tensor,
        cfg: TrainConfig, beta: float, seed: int, device: torch.device,
        checkpoint_dir: str | Path | None = None, meta: dict | None = None,
        pixels: str = "levels", progress: bool = True,
        on_epoch: Callable[[FitResult], None] | None = None,
        on_batch: Callable[[int, int, VAE], None] | None = None,
        resume: Resume | None = None) -> FitResult:
    """Train ``model`` on uint8 image arrays (N, C, H, W) and validate every epoch.

    ``pixels`` says what the model trains on (:func:`to_unit_float`: levels, dequantized or
    binarized, drawn anew each epoch); validation scores ``val_images`` as they are, or
    dequantized (seeded, the same every epoch) when training dequantizes, so a binarized run
    passes validation images binarized once. The KL weight follows ``cfg.kl_schedule``
    towards ``beta``. With ``checkpoint_dir``,
    writes the :data:`~vaepipe.train.checkpoints.CHECKPOINTS`: ``epoch_01.pt``, ``best.pt``
    (lowest validation loss at the *target* weight ``beta``, so warm-up epochs cannot win on a
    discounted KL) and ``final.pt``; ``meta`` is stored in each, with the optimizer and
    ``pixels`` (what the model trained on). ``on_batch(epoch, batch,
    model)`` runs after every optimizer step (batch is 1-based; the model is in training mode
    and must be left so), ``on_epoch(result)`` after each epoch's validation and checkpoints,
    with the epochs done so far (the stages write their history and partial metrics there).
    With ``progress``, a tqdm bar per epoch where stderr is a terminal, and one line per
    epoch in any case (so a log file, ``dvc queue logs``, holds one line per epoch). A
    non-finite loss raises :class:`TrainingDiverged` naming the epoch and batch; checkpoints
    already written are kept, and nothing from the bad epoch is saved. With ``resume``, the
    run goes on from its saved state, if there is one, and saves one after every epoch.
    """
    torch.manual_seed(seed)
    model.to(device).train()
    train_x = torch.as_tensor(train_images).to(device)
    val_x = torch.as_tensor(val_images).to(device)
    opt = make_optimizer(cfg, model.parameters())
    # what the optimizer really is, read back from it (not the config), for the checkpoints
    group = opt.param_groups[0]
    meta = {**(meta or {}), "optimizer": {"class": type(opt).__name__, "lr": group["lr"],
                                          "weight_decay": group["weight_decay"]},
            "pixels": pixels}
    gen = torch.Generator(device=device).manual_seed(seed)
    val_pixels = "dequantized" if pixels == "dequantized" else "levels"
    written = ([] if checkpoint_dir is None else
               [Path(checkpoint_dir) / f"{name}.pt" for name in CHECKPOINTS[:2]])
    result = FitResult()
    state = resume.load() if resume is not None else None
    if state is not None:
        result = restore_state(state, model, opt, gen)
    result.patience, result.warmup_end = cfg.patience, warmup_end(cfg)
    if state is not None and on_epoch is not None:
        on_epoch(result)
    for epoch in range(len(result.history) + 1, cfg.epochs + 1):
        if result.stopped_early:
            break
        weight = scheduled_kl_weight(cfg, epoch, beta)
        after_batch = None if on_batch is None else (
            lambda b, epoch=epoch: on_batch(epoch, b, model))
        train_means, seconds = train_epoch(model, opt, train_x, cfg, weight, pixels, gen,
                                           f"{model.kind} epoch {epoch}/{cfg.epochs}", epoch,
                                           progress, after_batch)
        val = evaluate_elbo(model, val_x, beta, val_pixels, seed)
        result.history.append(
            {"epoch": epoch, "beta": weight, "lr": opt.param_groups[0]["lr"],
             "train_loss": train_means[0], "train_recon": train_means[1],
             "train_kl": train_means[2], **{f"val_{k}": v for k, v in val.items()},
             "seconds": seconds, "images_per_second": len(train_x) / seconds})
        if not all(math.isfinite(v) for v in val.values()):
            raise TrainingDiverged(f"non-finite validation loss at epoch {epoch}: {val}; "
                                   f"lower the learning rate (lr) or enable gradient clipping.")
        save_epoch_checkpoints(checkpoint_dir, model, result, meta)
        if progress:
            tqdm.write(f"{model.kind} epoch {epoch:3d}/{cfg.epochs}: kl weight {weight:.3f}  "
                       f"train {train_means[0]:.2f}  val nelbo {val['nelbo']:.2f} "
                       f"(recon {val['recon']:.2f}, kl {val['kl']:.2f})  "
                       f"{len(train_x) / seconds:,.0f} img/s", file=sys.stderr)
        if resume is not None:
            resume.save(epoch, cfg.epochs,
                        lambda: fit_state(model, opt, gen, result, written))
        if on_epoch is not None:
            on_epoch(result)
    if checkpoint_dir is not None:
        save_checkpoint(Path(checkpoint_dir) / f"{CHECKPOINTS[2]}.pt", model,
                        {"epoch": result.history[-1]["epoch"],
                         "metrics": _val_metrics(result.history[-1]), **meta})
    if progress and result.stopped_early:
        tqdm.write(f"{model.kind}: stopped at epoch {len(result.history)}: no better validation "
                   f"loss in the {cfg.patience} epochs after epoch {result.best_epoch}",
                   file=sys.stderr)
    return result


def fit_state(model: VAE, opt: torch.optim.Optimizer, gen: torch.Generator,
              result: FitResult, written: list[Path]) -> dict:
    """What the rest of a run depends on, after an epoch (:func:`restore_state` reads it)."""
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "generator": gen.get_state(), "history": result.history,
            "best_epoch": result.best_epoch, "best": result.best, "files": file_tensors(written)}


def restore_state(state: dict, model: VAE, opt: torch.optim.Optimizer,
                  gen: torch.Generator) -> FitResult:
    """Put a saved state back: weights, optimizer, the loop's and torch's generators, the
    checkpoints written so far; returns the epochs done."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    set_rng_state(state["rng"])
    restore_files(state["files"])
    return FitResult(history_rows(state["history"]), state["best_epoch"],
                     history_rows([state["best"]])[0])


def train_epoch(model: VAE, opt: torch.optim.Optimizer, train_x: torch.Tensor,
                cfg: TrainConfig, weight: float, pixels: str, gen: torch.Generator,
                desc: str, epoch: int, progress: bool = True,
                after_batch: Callable[[int], None] | None = None) -> tuple[list[float], float]:
    """One pass over ``train_x`` in a seeded random order, one optimizer step per batch of
    ``cfg.batch_size``; returns the epoch's mean (loss, recon, kl) and its seconds.
    ``after_batch(b)`` runs after step b (1-based). A non-finite loss raises
    :class:`TrainingDiverged` naming ``epoch`` and the batch."""
    device = train_x.device
    n, bs = len(train_x), cfg.batch_size
    n_batches = math.ceil(n / bs)
    _sync(device)
    start = time.perf_counter()
    shuffled = train_x[torch.randperm(n, generator=gen, device=device)]
    # Per-batch (loss, recon, kl) kept on the device: no host sync inside the loop.
    stats = torch.empty(n_batches, 3, device=device)
    # disable=None: no bar where stderr is not a terminal (a redrawn bar in a log file is
    # a thousand fragments of lines)
    bar = tqdm(total=n, desc=desc, unit="img", disable=None if progress else True, leave=False)
    for b in range(n_batches):
        x = to_unit_float(shuffled[b * bs:(b + 1) * bs], pixels, gen)
        out, mu, logvar, z = model(x, gen)
        terms = vae_loss(model, x, out, mu, logvar, z, weight)
        opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        stats[b] = torch.stack(terms).detach()
        bar.update(len(x))
        if after_batch is not None:
            after_batch(b + 1)
    bar.close()
    _sync(device)
    seconds = time.perf_counter() - start
    bad = ~torch.isfinite(stats).all(dim=1)
    if bad.any():
        bad_batch = int(bad.nonzero()[0])
        raise TrainingDiverged(
            f"non-finite loss at epoch {epoch}, batch {bad_batch + 1} of {n_batches} "
            f"(loss={stats[bad_batch, 0].item()}); lower the learning rate (lr) or enable "
            f"gradient clipping (grad_clip > 0). Checkpoints from earlier epochs are kept.")
    sizes = torch.full((n_batches,), float(bs), device=device)
    sizes[-1] = n - bs * (n_batches - 1)
    return ((stats * sizes[:, None]).sum(0) / n).tolist(), seconds


def _val_metrics(row: dict) -> dict:
    return {k: row[k] for k in ("val_loss", "val_recon", "val_kl", "val_nelbo")}


def save_epoch_checkpoints(checkpoint_dir: str | Path | None, model: VAE, result: FitResult,
                           meta: dict) -> None:
    """After the epoch just appended to ``result.history``: ``epoch_01.pt`` after the first,
    ``best.pt`` when its validation loss is the lowest so far (``result`` then records it)."""
    row = result.history[-1]
    val_metrics = _val_metrics(row)
    saved = {"epoch": row["epoch"], "metrics": val_metrics, **meta}
    first_ckpt, best_ckpt, _ = CHECKPOINTS
    if checkpoint_dir is not None and row["epoch"] == 1:
        save_checkpoint(Path(checkpoint_dir) / f"{first_ckpt}.pt", model, saved)
    if row["val_loss"] < result.best.get("val_loss", math.inf):
        result.best_epoch, result.best = row["epoch"], val_metrics
        if checkpoint_dir is not None:
            save_checkpoint(Path(checkpoint_dir) / f"{best_ckpt}.pt", model, saved)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def summarize(result: FitResult, device: torch.device, model: VAE, partial: bool = False
              ) -> dict:
    """The metrics JSON of a training run; ``partial``: written while it still runs (``epochs``
    is then the epochs done so far)."""
    last = result.history[-1]
    return {
        "partial": partial,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best["val_loss"],
        "best_val_nelbo": result.best["val_nelbo"],
        "best_val_recon": result.best["val_recon"],
        "best_val_kl": result.best["val_kl"],
        "final_val_nelbo": last["val_nelbo"],
        "epochs": last["epoch"],
        **({"stopped_early": result.stopped_early, "patience": result.patience}
           if result.patience else {}),
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

