"""Shapes of every model on every dataset's image shape, and the checkpoint round trip."""
import pytest
import torch
from torch import nn

from vaepipe.evaluate.classifier import Classifier
from vaepipe.models.vae import MODELS, ConvVAE, MLPVAE, build_model, conv_output_sizes

SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
VARIANTS = {
    "mlp": [dict(latent_dim=32, hidden=(512, 256), activation="leaky_relu", negative_slope=0.2),
            dict(latent_dim=20, hidden=(400, 400), activation="relu", negative_slope=0.0)],
    "conv": [dict(latent_dim=16, channels=(32, 64)),
             dict(latent_dim=128, channels=(96, 192, 384))],
}


@pytest.mark.parametrize("dataset", sorted(SHAPES))
@pytest.mark.parametrize("kind,args", [(k, a) for k, vs in VARIANTS.items() for a in vs])
def test_shapes(kind, args, dataset):
    shape = SHAPES[dataset]
    model = build_model(kind, image_shape=shape, **args)
    x = torch.rand(5, *shape)
    logits, mu, logvar, z = model(x)
    assert z.shape == mu.shape
    assert logits.shape == (5, *shape)
    assert mu.shape == logvar.shape == (5, args["latent_dim"])
    assert model.decode(torch.randn(3, args["latent_dim"])).shape == (3, *shape)
    # gradients reach the first layer through the reparameterisation
    logits.sum().backward()
    first = next(model.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_conv_sizes_mirror_encoder():
    assert conv_output_sizes(28, 3) == [28, 14, 7, 4]
    assert conv_output_sizes(32, 3) == [32, 16, 8, 4]
    # 28 with three layers goes through an odd size (7); the decoder must still return 28
    model = ConvVAE((1, 28, 28), latent_dim=4, channels=(8, 8, 8))
    assert model.decode(torch.randn(2, 4)).shape == (2, 1, 28, 28)


def test_conv_layout_matches_recipe_002():
    model = ConvVAE((1, 28, 28), latent_dim=16, channels=(32, 64))
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 32, (3, 3), (2, 2)), (32, 64, (3, 3), (2, 2))]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder) == 2
    assert model.fc_mu.in_features == 64 * 7 * 7


def test_mlp_layout_matches_recipe_000():
    model = MLPVAE((1, 28, 28), latent_dim=32, hidden=(512, 256))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 512), (512, 256), (256, 32), (256, 32), (32, 256), (256, 512), (512, 784)]
    acts = [m for m in model.encoder if isinstance(m, torch.nn.LeakyReLU)]
    assert len(acts) == 2 and acts[0].negative_slope == 0.2


def test_registry_and_errors():
    assert set(MODELS) == {"mlp", "conv"}
    with pytest.raises(ValueError, match="unknown model kind 'vq'"):
        build_model("vq", image_shape=(1, 28, 28))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_model_args_rebuild_identical_model(kind):
    torch.manual_seed(0)
    model = build_model(kind, image_shape=(1, 28, 28), **VARIANTS[kind][0])
    clone = build_model(kind, **model.model_args)
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    z = torch.randn(4, model.latent_dim)
    assert torch.equal(model.decode(z), clone.decode(z))


def test_conv_models_hold_channels_last_weights_and_load_either_layout():
    vae = build_model("conv", image_shape=(1, 28, 28), latent_dim=4, channels=(8, 16))
    clf = Classifier((1, 28, 28), 10, (8, 16), 32)
    for model in (vae, clf):
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last)
                             for m in convs)
    # a checkpoint written from contiguous weights loads into the channels-last model
    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    again = build_model("conv", image_shape=(1, 28, 28), latent_dim=4, channels=(8, 16))
    again.load_state_dict(state)
    x = torch.rand(3, 1, 28, 28)
    vae.eval()
    again.eval()
    assert torch.equal(vae(x, torch.Generator().manual_seed(0))[0],
                       again(x, torch.Generator().manual_seed(0))[0])
