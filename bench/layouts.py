"""Memory layout of the convolutional models: contiguous (NCHW) against channels-last (NHWC).

The conv VAE and the classifier keep their 4-D weights channels-last (``vaepipe.models``,
``vaepipe.classifier``). This script measures what that buys, in one process on one machine:
both layouts of each model are trained on the same random batches, in alternating blocks of
steps, and the median step time of each is compared. Same initial weights, same optimizer
(fused Adam), same loss as the stages.

    python bench/layouts.py                  # CPU, 10 blocks of 10 steps per model and layout
    python bench/layouts.py --blocks 4 --device cuda
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from vaepipe import runtime
from vaepipe.evaluate.classifier import Classifier
from vaepipe.models.vae import build_model
from vaepipe.train.objective import vae_loss

CASES = {  # name: (model factory, batch size), the default params' shapes
    "conv VAE (train-conv)": (lambda: build_model("conv", image_shape=(1, 28, 28),
                                                  latent_dim=16, channels=(32, 64)), 128),
    "conv VAE z2 (beta-sweep)": (lambda: build_model("conv", image_shape=(1, 28, 28),
                                                     latent_dim=2, channels=(32, 64)), 256),
    "classifier (train-classifier)": (lambda: Classifier((1, 28, 28), 10, (16, 32), 128), 128),
}


def step_fn(model, batch_size: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 1, 28, 28), generator=gen, dtype=torch.uint8)
    x = images.to(device).float().div_(255)
    y = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type != "mps")

    def step():
        if isinstance(model, Classifier):
            loss = F.cross_entropy(model(x), y)
        else:
            logits, mu, logvar, z = model(x)
            loss = vae_loss(model, x, logits, mu, logvar, z).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def block(step, n: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1000


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10, help="steps per block")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    runtime.configure_kernels()  # the stages' kernel settings
    device = torch.device(args.device)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {device}")
    print(f"{'model':32s} {'NCHW ms/step':>13s} {'NHWC ms/step':>13s} {'speed-up':>9s}")
    for name, (factory, batch_size) in CASES.items():
        steps = {}
        for layout in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            model = factory().to(device, memory_format=layout).train()
            steps[layout] = step_fn(model, batch_size, device)
            block(steps[layout], 3, device)  # warm-up: oneDNN builds its kernels
        times = {layout: [] for layout in steps}
        for _ in range(args.blocks):
            for layout, step in steps.items():
                times[layout].append(block(step, args.steps, device))
        nchw, nhwc = (statistics.median(times[k]) for k in steps)
        print(f"{name:32s} {nchw:13.2f} {nhwc:13.2f} {nchw / nhwc:8.2f}x")


if __name__ == "__main__":
    main()
