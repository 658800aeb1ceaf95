"""Layers shared by the convolutional models: a BatchNorm whose sums do not follow the thread count.

The conv VAE and the classifier keep their 4-D tensors channels-last (NHWC), which spares
oneDNN a layout reorder around every convolution. PyTorch's channels-last BatchNorm kernels
on the CPU, though, cut the N*H*W rows into one chunk per thread and add the per-thread
partial sums: with 1 and 2 threads the batch statistics, and so the weights, differ in the
last bits. A stage's thread count follows how many stages share the machine
(:mod:`vaepipe.runtime`), so :class:`BatchNorm2d` always runs those kernels with
:data:`BATCH_NORM_THREADS` threads, which makes every run's bits independent of the count.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

BATCH_NORM_THREADS = 2  # fixed, whatever the stage's share: it sets the summation order


@contextmanager
def fixed_threads(n: int):
    """Run the block with ``n`` intra-op threads, then give the caller its own count back."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _BatchNormTrain(torch.autograd.Function):
    """Training-mode batch norm, forward and backward, at :data:`BATCH_NORM_THREADS` threads."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        with fixed_threads(BATCH_NORM_THREADS):
            y, mean, invstd = torch.ops.aten.native_batch_norm(
                x, weight, bias, running_mean, running_var, True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        with fixed_threads(BATCH_NORM_THREADS):
            gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
                grad.contiguous(memory_format=torch.channels_last), x, weight, None, None,
                mean, invstd, True, ctx.eps, list(ctx.needs_input_grad[:3]))
        return gx, gw, gb, None, None, None, None


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state_dict) with thread-count-free
    results on channels-last CPU tensors in training; anything else takes the stock path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and self.affine
                and x.device.type == "cpu" and x.dim() == 4
                and x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                    else self.momentum)
        return _BatchNormTrain.apply(x, self.weight, self.bias, self.running_mean,
                                     self.running_var, momentum, self.eps)
