"""Training throughput: our loop against the recipes' reference loop, in one run, one machine.

Reference (recipes 000 / 002): ``torchvision.datasets.FashionMNIST`` + ``transforms.ToTensor()``
+ ``DataLoader(batch_size=128, shuffle=True)``, a per-batch ``.to(device)``, ``torch.optim.Adam``
with its default implementation and ``.item()`` on every batch's terms. Ours:
``vaepipe.train.loop.fit`` (uint8 tensors on the device, seeded in-place shuffling, fused Adam). Same model classes, same
objective, same KL weights, same learning rate, batch 128, same initial weights.

Both read the same raw files (``data/raw/fashion-mnist``, written by ``dvc repro download``);
test NELBO is computed afterwards for both by the same function with the same noise seed.

    python bench/train_throughput.py                 # MLP and conv, 2 epochs each, CPU
    python bench/train_throughput.py --device cuda --models conv --epochs 3
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vaepipe.config import load_params
from vaepipe.data.arrays import load_split
from vaepipe.data.formats import FORMATS
from vaepipe.models.vae import build_model, model_args
from vaepipe.train.objective import evaluate_elbo, vae_loss
from vaepipe.train.device import device_name, resolve_device
from vaepipe.train.loop import fit, scheduled_kl_weight


def reference_train(model, cfg, beta, epochs, device, raw_dir, seed):
    """The recipes' loop, as written there: DataLoader over a torchvision dataset."""
    from torch.utils.data import DataLoader, random_split
    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory() as root:
        # torchvision expects <root>/FashionMNIST/raw/<decompressed IDX files>.
        raw = Path(root, "FashionMNIST", "raw")
        raw.mkdir(parents=True)
        for name in FORMATS["idx"].raw_files:
            (raw / name).symlink_to(Path(raw_dir, name).resolve())
        full = datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor(),
                                     download=False)
        n_val = int(len(full) * 0.1)
        train, _ = random_split(full, [len(full) - n_val, n_val],
                                generator=torch.Generator().manual_seed(seed))
        loader = DataLoader(train, batch_size=128, shuffle=True)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        model.to(device).train()
        seconds = 0.0
        for epoch in range(1, epochs + 1):
            weight = scheduled_kl_weight(cfg, epoch, beta)
            start = time.perf_counter()
            total = 0.0
            for x, _ in loader:
                x = x.to(device)
                logits, mu, logvar, z = model(x)
                terms = vae_loss(model, x, logits, mu, logvar, z, weight)
                opt.zero_grad()
                terms.loss.backward()
                opt.step()
                total += terms.loss.item() * len(x)  # the recipes log every batch this way
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
        return len(train) * epochs / seconds, seconds / epochs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", default="data/raw/fashion-mnist")
    ap.add_argument("--processed", default="data/processed/fashion-mnist")
    ap.add_argument("--models", nargs="+", default=["mlp", "conv"], choices=["mlp", "conv"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    device = resolve_device(args.device)
    train_x, _ = load_split(args.processed, "train")
    test_x, _ = load_split(args.processed, "test")
    test_t = torch.as_tensor(test_x).to(device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; batch 128; "
          f"{args.epochs} epochs each; train images {len(train_x)}; one run per row")
    print(f"{'model':6s} {'recipe':10s} {'img/s':>9s} {'s/epoch':>8s} {'test NELBO':>11s}")
    for kind in args.models:
        cfg = getattr(params, kind).model_copy(update={"batch_size": 128})
        rows = {}
        for recipe in ("reference", "ours"):
            torch.manual_seed(params.seed)
            model = build_model(kind, image_shape=train_x.shape[1:], **model_args(kind, cfg))
            if recipe == "reference":
                ips, spe = reference_train(model, cfg, params.beta, args.epochs, device,
                                           args.raw, params.seed)
            else:
                res = _fit_first_epochs(model, train_x, cfg, args.epochs, params, device)
                ips = len(train_x) * args.epochs / res.train_seconds
                spe = res.train_seconds / args.epochs
            nelbo = evaluate_elbo(model, test_t, 1.0, seed=0)["nelbo"]
            rows[recipe] = (ips, nelbo)
            print(f"{kind:6s} {recipe:10s} {ips:9,.0f} {spe:8.2f} {nelbo:11.2f}", flush=True)
        (ref_ips, ref_nelbo), (our_ips, our_nelbo) = rows["reference"], rows["ours"]
        print(f"{kind:6s} speed-up {our_ips / ref_ips:.2f}x; test NELBO ours - reference = "
              f"{our_nelbo - ref_nelbo:+.2f} nats")


def _fit_first_epochs(model, train_x, cfg, epochs, params, device):
    """``fit`` for the first ``epochs`` of the configured run (constant/linear KL weights
    do not depend on the run length, so they match the reference's)."""
    if cfg.kl_schedule == "cyclical":
        raise SystemExit("the benchmark compares constant/linear schedules only")
    # fit's seconds exclude validation; a tiny validation set keeps the run short.
    return fit(model, train_x, train_x[:100], cfg.model_copy(update={"epochs": epochs}),
               params.beta, params.seed, device, progress=False)


if __name__ == "__main__":
    main()
