"""The objective against torch.distributions (oracle tests) and the schedules' values."""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaepipe.evaluate.measures import bits_per_dim
from vaepipe.models.likelihoods import make_likelihood
from vaepipe.models.priors import StandardNormal
from vaepipe.models.vae import MLPVAE
from vaepipe.train.objective import kl_weight, vae_loss


def kl_per_sample(mu, logvar):
    return StandardNormal(mu.shape[1]).kl(mu, logvar, None, None)


def recon_per_sample(out, x, name="bernoulli", obs_std=None):
    spec = name if obs_std is None else {"name": name, "obs_std": obs_std}
    return make_likelihood(spec).recon_per_sample(out, x)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(8, 5) * 2, torch.randn(8, 5)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    p = Independent(Normal(torch.zeros(5), torch.ones(5)), 1)
    torch.testing.assert_close(kl_per_sample(mu, logvar), kl_divergence(q, p))


def test_kl_is_zero_at_the_prior():
    assert torch.all(kl_per_sample(torch.zeros(3, 4), torch.zeros(3, 4)) == 0)


def test_bernoulli_recon_is_the_negative_log_likelihood():
    torch.manual_seed(1)
    logits = torch.randn(4, 1, 6, 6)
    x = torch.randint(0, 2, (4, 1, 6, 6)).float()
    expected = -Independent(Bernoulli(logits=logits), 3).log_prob(x)
    torch.testing.assert_close(recon_per_sample(logits, x, "bernoulli"), expected)


def test_gaussian_recon_is_the_negative_log_likelihood():
    torch.manual_seed(2)
    logits, x = torch.randn(3, 3, 4, 4), torch.rand(3, 3, 4, 4)
    expected = -Independent(Normal(torch.sigmoid(logits), 0.1), 3).log_prob(x)
    torch.testing.assert_close(recon_per_sample(logits, x, "gaussian", 0.1), expected)


def test_vae_loss_terms_and_weight():
    torch.manual_seed(3)
    logits, x = torch.randn(6, 1, 4, 4), torch.rand(6, 1, 4, 4)
    mu, logvar = torch.randn(6, 3), torch.randn(6, 3)
    model = MLPVAE((1, 4, 4), latent_dim=3, hidden=(8,))
    terms = vae_loss(model, x, logits, mu, logvar, mu, kl_weight=0.25)
    torch.testing.assert_close(terms.recon, recon_per_sample(logits, x).mean())
    torch.testing.assert_close(terms.kl, kl_per_sample(mu, logvar).mean())
    torch.testing.assert_close(terms.loss, terms.recon + 0.25 * terms.kl)
    with pytest.raises(ValueError, match="likelihood must be one of bernoulli, gaussian, "):
        MLPVAE((1, 4, 4), latent_dim=3, likelihood="laplace")


def test_linear_warmup_matches_recipe_000():
    # recipe 000: beta * min(1, epoch / 25) for 1-based epochs
    weights = [kl_weight("linear", e, 50, 1.0, warmup_epochs=25) for e in range(1, 51)]
    assert weights[0] == pytest.approx(0.04)
    assert weights[11] == pytest.approx(12 / 25)
    assert weights[24:] == [1.0] * 26
    assert kl_weight("linear", 5, 50, 0.5, warmup_epochs=10) == pytest.approx(0.25)
    assert kl_weight("linear", 1, 5, 0.7, warmup_epochs=0) == 0.7


def test_constant_schedule():
    assert {kl_weight("constant", e, 25, 0.3) for e in range(1, 26)} == {0.3}


def test_cyclical_schedule_fu_et_al():
    # 8 epochs, 2 cycles of 4, ratio 0.5: rise 0 -> beta over 2 epochs, hold for 2
    weights = [kl_weight("cyclical", e, 8, 2.0, cycles=2, cycle_ratio=0.5) for e in range(1, 9)]
    assert weights == pytest.approx([0.0, 1.0, 2.0, 2.0, 0.0, 1.0, 2.0, 2.0])
    # ratio 1: a pure sawtooth
    saw = [kl_weight("cyclical", e, 6, 1.0, cycles=1, cycle_ratio=1.0) for e in range(1, 7)]
    assert saw == pytest.approx([i / 6 for i in range(6)])


def test_schedule_errors():
    with pytest.raises(ValueError, match="kl_schedule must be"):
        kl_weight("sigmoid", 1, 10, 1.0)
    with pytest.raises(ValueError, match="1-based"):
        kl_weight("constant", 0, 10, 1.0)


def test_bits_per_dim_scale():
    # a model that assigns p = 1/2 to every binary pixel pays exactly 1 bit per dimension
    logits, x = torch.zeros(2, 1, 28, 28), torch.randint(0, 2, (2, 1, 28, 28)).float()
    nats = recon_per_sample(logits, x)
    for per_image in nats.tolist():
        assert bits_per_dim(per_image, 784) == pytest.approx(1.0, rel=1e-6)
    # recipe 000's conversion of its NELBO: nats / (D ln 2), here 3 channels of 32 x 32
    assert bits_per_dim(3072 * math.log(2) * 2.5, 3 * 32 * 32) == pytest.approx(2.5)
