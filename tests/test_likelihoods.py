"""The pixel likelihoods and the 8-bit rate against oracles: quadrature, torch.distributions,
sums over the 256 levels, and models whose rate is known exactly."""
import math

import numpy as np
import pytest
import torch
from torch.distributions import (AffineTransform, ContinuousBernoulli, SigmoidTransform,
                                 TransformedDistribution, Uniform)

from vaepipe.config import ConfigError, TrainConfig, parse_params
from vaepipe.data.baselines import histogram_bits, histogram_log_probs
from vaepipe.models.batches import binarize_fixed, decode_mean, to_unit_float
from vaepipe.models.likelihoods import (LOG_SCALE_MIN, bits_per_dim_8bit, cb_log_norm, cb_mean,
                                        discretized_logistic_log_prob, make_likelihood)
from vaepipe.models.vae import ConvVAE, MLPVAE
from vaepipe.train.objective import elbo_per_image


def recon_per_sample(out, x, name="bernoulli"):
    return make_likelihood(name).recon_per_sample(out, x)


def mean_image(out, name):
    return make_likelihood(name).mean(out)


def output_channels(name, channels):
    return make_likelihood(name).output_channels(channels)


def rate_scoring(name):
    """(the scoring likelihood's name, dequantized) of a likelihood's 8-bit rate."""
    scorer, dequantized = make_likelihood(name).rate_scoring()
    return scorer.name, dequantized


def training_pixels(name, dequantize, binarize):
    return make_likelihood(name).training_pixels(dequantize, binarize)

# lambda from 1e-6 to 1 - 1e-6, as logits; 0 and tiny logits hit the series branch
LOGITS = torch.tensor([-13.8155, -8.0, -2.0, -0.3, -0.009, -1e-4, 0.0, 1e-5, 0.004, 0.2, 1.0,
                       5.0, 13.8155], dtype=torch.float64)


def cb_log_density(logits, y):
    return -recon_per_sample(logits.reshape(1, 1, 1, -1), y.reshape(1, 1, 1, -1),
                             "continuous_bernoulli")


def test_continuous_bernoulli_integrates_to_one_on_the_unit_interval():
    # Gauss-Legendre quadrature on [0, 1], in float64: the density of every lambda sums to 1
    nodes, weights = np.polynomial.legendre.leggauss(200)
    y = torch.as_tensor((nodes + 1) / 2)
    w = torch.as_tensor(weights / 2)
    for logit in LOGITS:
        l = logit.expand_as(y)
        per_pixel = y * l - torch.nn.functional.softplus(l) + cb_log_norm(l)
        assert float((per_pixel.exp() * w).sum()) == pytest.approx(1.0, abs=1e-9), float(logit)


def test_continuous_bernoulli_matches_torch_distributions():
    y = torch.rand(len(LOGITS), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = ContinuousBernoulli(logits=LOGITS).log_prob(y)
    per_pixel = y * LOGITS - torch.nn.functional.softplus(LOGITS) + cb_log_norm(LOGITS)
    torch.testing.assert_close(per_pixel, expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(cb_log_density(LOGITS, y), expected.sum().reshape(1),
                               rtol=0, atol=1e-8)
    # in float32 (training's dtype), the series branch and the closed form both hold
    torch.testing.assert_close(cb_log_norm(LOGITS.float()).double(),
                               expected - (y * LOGITS - torch.nn.functional.softplus(LOGITS)),
                               rtol=0, atol=1e-6)
    assert cb_log_norm(torch.zeros(1)).item() == pytest.approx(math.log(2))


def test_continuous_bernoulli_mean_is_not_lambda():
    expected = ContinuousBernoulli(logits=LOGITS).mean
    torch.testing.assert_close(cb_mean(LOGITS), expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(mean_image(LOGITS, "continuous_bernoulli"), expected,
                               rtol=0, atol=1e-9)
    # lambda = sigmoid(2) is 0.881; the continuous Bernoulli's mean is 0.657
    assert cb_mean(torch.tensor(2.0)).item() == pytest.approx(0.6565, abs=1e-4)
    assert cb_mean(torch.tensor(0.0)).item() == 0.5


def test_gradients_are_finite_at_the_series_branch():
    logits = torch.tensor([0.0, 1e-6, -1e-3, 3.0], requires_grad=True)
    y = torch.full((4,), 0.3)
    cb_log_density(logits, y).sum().backward()
    assert torch.isfinite(logits.grad).all()


LEVEL_VALUES = torch.arange(256, dtype=torch.float32) / 255


@pytest.mark.parametrize("mean", [0.0, 1e-3, 0.2, 0.5, 0.93, 1.0])
def test_discretized_logistic_bins_sum_to_one(mean):
    for log_scale in (LOG_SCALE_MIN, -5.0, -2.0, 0.0, 2.0):
        # float32 (training's dtype) rounds the bin edges v / 255 +- 1 / 510 apart
        for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
            levels = torch.arange(256, dtype=dtype) / 255
            lp = discretized_logistic_log_prob(levels, torch.tensor(mean, dtype=dtype),
                                               torch.tensor(log_scale, dtype=dtype))
            assert torch.isfinite(lp).all()
            assert float(lp.double().exp().sum()) == pytest.approx(1.0, abs=tolerance), (
                mean, log_scale, dtype)


def test_discretized_logistic_matches_the_logistic_cdf():
    # torch has no discretized logistic: its bins from the CDF of a logistic built in
    # torch.distributions (sigmoid^-1 of a uniform, scaled and shifted)
    mean, log_scale = 0.37, -3.0
    logistic = TransformedDistribution(Uniform(0.0, 1.0), [SigmoidTransform().inv,
                                       AffineTransform(mean, math.exp(log_scale))])
    v = LEVEL_VALUES.double()
    upper = logistic.cdf(torch.clamp(v + 0.5 / 255, max=1e6))
    lower = logistic.cdf(v - 0.5 / 255)
    expected = torch.where(v == 0, upper, torch.where(v == 1, 1 - lower, upper - lower))
    got = discretized_logistic_log_prob(LEVEL_VALUES, torch.tensor(mean),
                                        torch.tensor(log_scale)).double().exp()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_discretized_logistic_decoder_output_and_mean():
    assert output_channels("discretized_logistic", 3) == 6 and output_channels("bernoulli", 3) == 3
    out = torch.randn(2, 2, 4, 4)
    out[:, 1] = -50.0  # log-scales far below the floor are clamped, not -inf
    recon = recon_per_sample(out, torch.rand(2, 1, 4, 4).mul(255).round() / 255,
                             "discretized_logistic")
    assert torch.isfinite(recon).all()
    torch.testing.assert_close(mean_image(out, "discretized_logistic"),
                               torch.sigmoid(out[:, :1]))


@pytest.mark.parametrize("kind", [MLPVAE, ConvVAE])
@pytest.mark.parametrize("likelihood", ["continuous_bernoulli", "discretized_logistic"])
def test_models_emit_what_their_likelihood_reads(kind, likelihood):
    model = kind((1, 28, 28), latent_dim=3, likelihood=likelihood)
    out = model.decode(torch.zeros(2, 3))
    assert out.shape == (2, output_channels(likelihood, 1), 28, 28)
    images = decode_mean(model, torch.zeros(5, 3), batch=2)
    assert images.shape == (5, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert model.model_args["likelihood"] == likelihood


def _uniform_model() -> MLPVAE:
    """An MLP whose posterior is the prior and whose decoder emits logit 0 everywhere."""
    model = MLPVAE((1, 28, 28), latent_dim=2, hidden=(8,))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def test_a_uniform_density_scores_exactly_eight_bits_per_dim():
    # lambda = 1/2 everywhere: the continuous Bernoulli is uniform on [0, 1], log p(y) = 0, KL
    # = 0, so the dequantized bound is D ln 256 nats: 8 bits/dim, whatever the images
    model = _uniform_model()
    images = torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8)
    assert rate_scoring("bernoulli") == ("continuous_bernoulli", True)
    likelihood, dequantized = make_likelihood("bernoulli").rate_scoring()
    recon, kl = elbo_per_image(model, images, "dequantized", 0, likelihood)
    assert torch.all(kl == 0)
    rate = bits_per_dim_8bit((recon + kl).numpy(), 784, dequantized)
    np.testing.assert_allclose(rate, 8.0, rtol=0, atol=1e-6)


def test_the_dequantized_bound_of_a_step_density_is_its_discrete_rate():
    # independent per-pixel categoricals P_d(v), turned into a step density on [0, 1] (256 P_d
    # on [v / 256, (v + 1) / 256)): E_u[-log p(y)] + D ln 256 = -log P(x), for every u
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (500, 1, 6, 6), dtype=np.uint8)
    test = rng.integers(0, 256, (40, 1, 6, 6), dtype=np.uint8)
    table = histogram_log_probs(train) * math.log(2)              # (D, 256), nats
    y = to_unit_float(torch.as_tensor(test), "dequantized",
                      torch.Generator().manual_seed(1)).numpy().reshape(len(test), -1)
    bins = np.floor(y * 256).astype(int)                          # the level y falls in
    step_log_density = (table[np.arange(36), bins] + math.log(256)).sum(axis=1)
    rate = bits_per_dim_8bit(-step_log_density, 36, dequantized=True)
    np.testing.assert_allclose(rate, histogram_bits(train, test) / 36, rtol=1e-12)


def test_each_likelihood_is_scored_for_the_rate_as_documented():
    assert rate_scoring("continuous_bernoulli") == ("continuous_bernoulli", True)
    assert rate_scoring("gaussian") == ("gaussian", True)
    assert rate_scoring("discretized_logistic") == ("discretized_logistic", False)
    # with obs_std 1 a Gaussian on [0, 1] costs at least 0.5 ln(2 pi) nats per pixel
    floor = bits_per_dim_8bit(784 * 0.5 * math.log(2 * math.pi), 784, True)
    assert floor == pytest.approx(9.33, abs=0.005)


# --------------------------------------------------------------------------------------------
# Binarization


def test_fixed_binarization_is_reproducible_and_follows_the_grey_levels():
    images = np.full((200, 1, 28, 28), 64, dtype=np.uint8)
    images[:, :, :, :14] = 255
    a, b = binarize_fixed(images), binarize_fixed(images)
    assert np.array_equal(a, b) and set(np.unique(a)) <= {0, 255}
    assert not np.array_equal(a, binarize_fixed(images, seed=1))
    assert (a[:, :, :, :14] == 255).all()                      # v = 255: always on
    assert (a[:, :, :, 14:] == 255).mean() == pytest.approx(64 / 255, abs=0.01)
    assert (binarize_fixed(np.zeros((3, 1, 4, 4), np.uint8)) == 0).all()


def test_dynamic_binarization_draws_anew_each_call():
    x = torch.full((4, 1, 8, 8), 128, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    first, second = to_unit_float(x, "binarized", gen), to_unit_float(x, "binarized", gen)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    again = to_unit_float(x, "binarized", torch.Generator().manual_seed(0))
    assert torch.equal(first, again)


def test_binarized_training_sees_new_bits_every_epoch(monkeypatch):
    from vaepipe.train import loop

    seen = []
    real = loop.to_unit_float

    def recording(x, pixels="levels", generator=None):
        out = real(x, pixels, generator)
        if pixels == "binarized":
            seen.append(out.clone())
        return out

    monkeypatch.setattr(loop, "to_unit_float", recording)
    # every image the same, one batch per epoch: the shuffle cannot change what is seen
    images = np.full((16, 1, 28, 28), 100, dtype=np.uint8)
    cfg = TrainConfig(epochs=2, batch_size=16)
    loop.fit(MLPVAE((1, 28, 28), latent_dim=2, hidden=(8,)), images, images, cfg, 1.0, 0,
             torch.device("cpu"), pixels="binarized", progress=False)
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])


def test_training_pixels_per_likelihood():
    assert training_pixels("bernoulli", False, "none") == "levels"
    assert training_pixels("bernoulli", True, "none") == "dequantized"
    assert training_pixels("continuous_bernoulli", False, "none") == "dequantized"
    assert training_pixels("discretized_logistic", False, "none") == "levels"
    assert training_pixels("bernoulli", False, "dynamic") == "binarized"


@pytest.mark.parametrize("raw, message", [
    ({"data": {"binarize": "dynamic"}, "mlp": {"likelihood": "continuous_bernoulli"}},
     "data.binarize: dynamic cannot go with mlp.likelihood: continuous_bernoulli"),
    ({"data": {"binarize": "dynamic"}, "conv": {"likelihood": "discretized_logistic"}},
     "data.binarize: dynamic cannot go with conv.likelihood: discretized_logistic"),
    ({"data": {"binarize": "dynamic", "dequantize": True}},
     "data.binarize: dynamic cannot go with data.dequantize: true"),
    ({"data": {"dequantize": True}, "conv": {"likelihood": "discretized_logistic"}},
     "data.dequantize: true cannot go with conv.likelihood: discretized_logistic"),
    ({"data": {"binarize": "static"}}, "data.binarize must be one of none, dynamic; got 'static'"),
])
def test_conflicting_pixel_keys_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
