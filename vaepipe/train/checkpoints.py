"""Self-describing checkpoints for every network of the pipeline (the VAEs, the classifier).

A checkpoint is a dict ``{"format", "kind", "model_args", "state_dict", ...meta}``: the kind
and its constructor arguments rebuild the network with nothing else (evaluate, visualize and
users' scripts need no params.yaml), and ``torch.load(weights_only=True)`` reads it without
running pickled code. A VAE's ``model_args`` name its likelihood with its parameters and its
prior, and ``pixels`` says what it trained on (:func:`trained_pixels`), which is all that
scoring it needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from vaepipe.io import atomic_path
from vaepipe.models.batches import PIXELS
from vaepipe.models.likelihoods import LIKELIHOODS, make_likelihood
from vaepipe.models.vae import MODELS, construct, model_class

CHECKPOINT_FORMAT = 1
# what fit writes per model: after the first epoch, at the best validation loss, at the end
CHECKPOINTS = ("epoch_01", "best", "final")


class CheckpointError(ValueError):
    """A checkpoint this code cannot load: unknown format or kind, or mismatched shapes."""


def save_checkpoint(path: str | Path, model: nn.Module, meta: Mapping) -> None:
    """Write ``model`` (which has ``kind`` and ``model_args``) and ``meta`` atomically."""
    ckpt = {"format": CHECKPOINT_FORMAT, "kind": model.kind, "model_args": model.model_args,
            "state_dict": model.state_dict(), **meta}
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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    kinds: Mapping[str, type[nn.Module]] | None = None,
                    missing: str = "not found") -> tuple[nn.Module, dict]:
    """Rebuild a network from its checkpoint alone; returns ``(model in eval mode, checkpoint)``.

    ``kinds`` maps the kinds accepted here to their classes (default: the VAEs of
    :data:`vaepipe.models.vae.MODELS`). A file that is not a checkpoint of
    :data:`CHECKPOINT_FORMAT`, names another kind or holds weights whose shapes do not fit its
    own ``model_args`` raises :class:`CheckpointError` naming the file.
    """
    kinds = MODELS if kinds is None else kinds
    ckpt = read_checkpoint(path, device, missing)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: checkpoint format {found!r} is not supported; this "
                              f"code reads format {CHECKPOINT_FORMAT} (retrain, or use the "
                              f"version of vaepipe that wrote it)")
    if ckpt.get("kind") not in kinds:
        raise CheckpointError(f"{path}: holds a {ckpt.get('kind')!r} network; expected "
                              f"{' or '.join(map(repr, kinds))}")
    try:
        cls = kinds[ckpt["kind"]]
        if kinds is MODELS:
            ckpt["model_args"] = _upgraded_args(ckpt)
            cls = model_class(ckpt["kind"], ckpt["model_args"].get("levels", 1))
        # first with no memory (the meta device): the weights must fit the arguments before a
        # real model of them is built, so no file can make this allocate more than it holds
        with torch.device("meta"):
            skeleton = construct(cls, ckpt["model_args"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model ({exc})") from None
    reason = _shape_mismatch(skeleton, ckpt.get("state_dict"))
    if reason:
        raise CheckpointError(f"{path}: weights do not fit a {ckpt['kind']} model with "
                              f"{ckpt['model_args']} ({reason})")
    model = construct(cls, ckpt["model_args"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path}: weights do not fit a {ckpt['kind']} model with "
                              f"{ckpt['model_args']} ({reason})") from None
    return model.to(device).eval(), ckpt


def _shape_mismatch(skeleton: nn.Module, state_dict) -> str:
    """Why the stored tensors are not those of the model the arguments build ('' if they are):
    compared by names and shapes, before any real model is built."""
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if not isinstance(state_dict, Mapping) or any(
            not isinstance(v, torch.Tensor) for v in state_dict.values()):
        return "no state_dict of tensors"
    have = {k: tuple(v.shape) for k, v in state_dict.items()}
    wrong = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
    return f"mismatched tensors {', '.join(wrong[:3])}{more}" if wrong else ""


def _upgraded_args(ckpt: dict) -> dict:
    """A VAE's ``model_args`` as this code writes them. Checkpoints written before likelihoods
    kept their parameters name the likelihood alone and kept them in the stored params."""
    args = dict(ckpt.get("model_args") or {})
    name = args.get("likelihood")
    if isinstance(name, str) and name in LIKELIHOODS and LIKELIHOODS[name].parameters():
        params = ckpt.get("params")
        section = params.get(ckpt.get("kind")) if isinstance(params, dict) else None
        section = section if isinstance(section, dict) else {}
        cls = LIKELIHOODS[name]
        values = {k: section[k] for k in cls.parameters() if k in section}
        args["likelihood"] = cls(**values).spec()
    return args


def trained_pixels(ckpt: dict) -> str:
    """What a VAE checkpoint's model trained on: levels, dequantized or binarized. Checkpoints
    that do not say it are read from their stored data params."""
    if ckpt.get("pixels") in PIXELS:
        return ckpt["pixels"]
    params = ckpt.get("params")
    data = params.get("data") if isinstance(params, dict) else None
    data = data if isinstance(data, dict) else {}
    likelihood = make_likelihood(ckpt["model_args"].get("likelihood", "bernoulli"))
    return likelihood.training_pixels(data.get("dequantize", False), data.get("binarize", "none"))
