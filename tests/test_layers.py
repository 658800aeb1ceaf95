"""vaepipe.layers.BatchNorm2d: PyTorch's BatchNorm, with results that do not follow the thread
count on channels-last CPU tensors, and the channels-last layout of the conv models."""
import pytest
import torch
from torch import nn

from vaepipe.classifier import Classifier
from vaepipe.layers import BatchNorm2d
from vaepipe.models import build_model

CL = torch.channels_last


def _train_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = x.clone().requires_grad_()
        y = layer(x)
        y.backward(grad)
    finally:
        torch.set_num_threads(before)
    return [y.detach(), x.grad, layer.weight.grad, layer.bias.grad, layer.running_mean.clone(),
            layer.running_var.clone(), layer.num_batches_tracked.clone()]


def _pair(channels: int, momentum):
    torch.manual_seed(0)
    stock = nn.BatchNorm2d(channels, momentum=momentum)
    ours = BatchNorm2d(channels, momentum=momentum)
    with torch.no_grad():  # non-trivial affine parameters, the same in both
        for layer in (stock, ours):
            layer.weight.copy_(torch.linspace(0.5, 1.5, channels))
            layer.bias.copy_(torch.linspace(-0.2, 0.2, channels))
    return stock, ours


@pytest.mark.parametrize("momentum", [0.1, None])
def test_training_mode_gives_the_stock_layers_numbers_at_two_threads(momentum):
    stock, ours = _pair(32, momentum)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):  # the running statistics after two updates too
        x = torch.randn(64, 32, 14, 14, generator=gen).contiguous(memory_format=CL)
        grad = torch.randn(x.shape, generator=gen).contiguous(memory_format=CL)
        stock.zero_grad()
        ours.zero_grad()
        want, got = _train_step(stock, x, grad, 2), _train_step(ours, x, grad, 2)
        assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert got[0].is_contiguous(memory_format=CL)


def test_one_and_three_threads_give_the_same_bits():
    x = torch.randn(128, 32, 14, 14, generator=torch.Generator().manual_seed(2))
    x = x.contiguous(memory_format=CL)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    results = []
    for threads in (1, 3):
        _, ours = _pair(32, 0.1)
        results.append(_train_step(ours, x, grad.contiguous(memory_format=CL), threads))
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert torch.get_num_threads() >= 1  # the caller's count is restored (checked in the step)


def test_the_callers_thread_count_survives_forward_and_backward():
    before = torch.get_num_threads()
    _, ours = _pair(8, 0.1)
    torch.set_num_threads(1)
    try:
        x = torch.randn(4, 8, 5, 5).contiguous(memory_format=CL).requires_grad_()
        ours(x).sum().backward()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_eval_mode_and_contiguous_inputs_take_the_stock_path():
    stock, ours = _pair(16, 0.1)
    x = torch.randn(8, 16, 7, 7)
    assert torch.equal(stock(x), ours(x))  # NCHW, training
    stock.eval()
    ours.eval()
    xc = x.contiguous(memory_format=CL)
    assert torch.equal(stock(xc), ours(xc))


def test_conv_models_hold_channels_last_weights_and_load_either_layout():
    vae = build_model("conv", image_shape=(1, 28, 28), latent_dim=4, channels=(8, 16))
    clf = Classifier((1, 28, 28), 10, (8, 16), 32)
    for model in (vae, clf):
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        assert convs and all(m.weight.is_contiguous(memory_format=CL) for m in convs)
    # a checkpoint written from contiguous weights loads into the channels-last model
    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    again = build_model("conv", image_shape=(1, 28, 28), latent_dim=4, channels=(8, 16))
    again.load_state_dict(state)
    x = torch.rand(3, 1, 28, 28)
    vae.eval()
    again.eval()
    assert torch.equal(vae(x, torch.Generator().manual_seed(0))[0],
                       again(x, torch.Generator().manual_seed(0))[0])
