"""Oracle tests of the evaluation measures: each number against a value known another way."""
import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaepipe.config import EvaluateConfig, TrainConfig
from vaepipe.evaluate.classifier import Classifier
from vaepipe.evaluate.bounds import iwae_bound
from vaepipe.evaluate.evaluation import (METRICS, NOISE_ELBO, build_reference,
                                         evaluate_checkpoint, frozen_key,
                                         recon_indices)
from vaepipe.evaluate.measures import (active_units, bce_floor, bits_per_dim, diversity, fid,
                                       frechet_distance, kl_per_dim, knn_radii,
                                       precision_recall, probe_accuracy, silhouette, subsample,
                                       unit_activity)
from vaepipe.evaluate.summary import METRIC_ROWS, OTHER_NUMBERS, run_sizes, summary_markdown
from vaepipe.io import write_npz
from vaepipe.models.batches import encode
from vaepipe.models.vae import VAE, build_model
from vaepipe.models.likelihoods import make_likelihood
from vaepipe.models.priors import StandardNormal
from vaepipe.train.objective import elbo_per_image, evaluate_elbo


class ToyVAE(VAE):
    """1-D latent, four pixels: p(x | z) Bernoulli(sigmoid(a z + c)) and a q(z | x) of fixed
    variance ``q_var`` around a linear guess, so the ELBO is loose when ``q_var`` is small."""

    kind = "toy"

    def __init__(self, q_var=0.05):
        super().__init__()
        self._describe((1, 2, 2), 1, "bernoulli", "standard_normal")
        self.q_var = q_var
        self.a = torch.tensor([2.0, -1.5, 1.0, 3.0]).view(1, 1, 2, 2)
        self.c = torch.tensor([0.5, 0.0, -1.0, 0.2]).view(1, 1, 2, 2)

    def encode(self, x):
        s = x.flatten(1).sum(1, keepdim=True)  # (B, 1)
        return 0.3 * s - 0.5, torch.full_like(s, math.log(self.q_var))

    def decode(self, z):
        return self.a * z.view(-1, 1, 1, 1) + self.c  # (B, 1, 2, 2) logits


def toy_images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, 1, 2, 2), generator=g) * 255).round().to(torch.uint8)


def exact_nll(model, images):
    """Mean -log p(x) by quadrature over the 1-D latent: the brute-force oracle of IWAE."""
    z = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    x = images.double().flatten(1) / 255.0                             # (N, 4)
    logits = model.a.double().flatten()[None] * z[:, None] + model.c.double().flatten()[None]
    # Bernoulli log-likelihood of grey levels, summed over pixels: (N, G)
    logsig = nn.functional.logsigmoid
    log_px_z = x @ logsig(logits).T + (1 - x) @ logsig(-logits).T
    log_joint = log_px_z + Normal(0.0, 1.0).log_prob(z)[None]
    dz = (z[1] - z[0]).item()
    return -(torch.logsumexp(log_joint, dim=1) + math.log(dz)).mean().item()


def test_iwae_with_one_sample_is_the_elbo_on_the_same_noise():
    model, images = ToyVAE(), toy_images(40)
    seed = 7
    iwae, mc_nelbo = iwae_bound(model, images, k=1, batch=16,
                                generator=torch.Generator().manual_seed(seed))
    # the ELBO by hand with torch.distributions, drawing eps exactly as iwae_bound does
    gen = torch.Generator().manual_seed(seed)
    x = images.float() / 255.0
    total = 0.0
    for i in range(0, len(x), 16):
        xb = x[i:i + 16]
        mu, logvar = model.encode(xb)
        eps = torch.randn((len(xb), 1, 1), generator=gen)[:, 0]
        q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
        z = mu + torch.exp(0.5 * logvar) * eps
        # grey levels as Bernoulli targets (as the objective does): outside the support checks
        bern = Independent(Bernoulli(logits=model.decode(z), validate_args=False), 3,
                           validate_args=False)
        log_w = (bern.log_prob(xb)
                 + Independent(Normal(torch.zeros_like(z), 1.0), 1).log_prob(z) - q.log_prob(z))
        total += log_w.sum().item()
    assert iwae.shape == (40,) and iwae.mean() == pytest.approx(-total / len(x), rel=1e-6)
    np.testing.assert_allclose(mc_nelbo, iwae, rtol=1e-12)  # log-sum-exp of one = the one


def test_iwae_is_non_decreasing_in_k_and_converges_to_the_exact_likelihood():
    images = toy_images(256)
    narrow = ToyVAE(q_var=0.05)  # a poor posterior: every step in K tightens the bound visibly
    truth = exact_nll(narrow, images)
    bounds = [iwae_bound(narrow, images, k, 16, torch.Generator().manual_seed(3))[0].mean()
              for k in (1, 8, 64, 512)]
    assert all(a - b > 0.02 for a, b in zip(bounds, bounds[1:])), bounds  # -log p(x) bound falls
    assert bounds[0] - truth > 0.4 and bounds[-1] > truth  # loose ELBO; still an upper bound
    wide = ToyVAE(q_var=0.2)  # close to the true posterior: K = 512 reaches -log p(x)
    truth = exact_nll(wide, images)
    tight = iwae_bound(wide, images, 512, 16, torch.Generator().manual_seed(3))[0].mean()
    assert tight == pytest.approx(truth, abs=0.02)


def test_iwae_k1_agrees_with_evaluate_elbo_on_a_real_model():
    # evaluate_elbo uses the closed-form KL, the IWAE estimate a sampled one: equal in
    # expectation (measured: 0.016 apart, standard error 0.012; the tolerance is ~4 of those)
    torch.manual_seed(0)
    model = build_model("mlp", image_shape=(1, 4, 4), latent_dim=3, hidden=(16,)).eval()
    images = toy_images(2000, seed=1).repeat(1, 1, 2, 2)
    elbo = evaluate_elbo(model, images, 1.0, seed=0)["nelbo"]
    _, mc = iwae_bound(model, images, 1, 500, torch.Generator().manual_seed(0))
    assert mc.mean() == pytest.approx(elbo, abs=0.05)
    iwae10, mc10 = iwae_bound(model, images, 10, 100, torch.Generator().manual_seed(0))
    assert mc10.mean() == pytest.approx(elbo, abs=0.05)
    assert (iwae10 <= mc10).all()  # Jensen, image by image


def test_bits_per_dim_converts_nats():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    assert bits_per_dim(239.01, 784) == pytest.approx(239.01 / 784 / 0.6931471805599453)
    assert bits_per_dim(239.01, 784) == pytest.approx(0.4398, abs=1e-4)  # README's 0.440


def test_bce_floor_is_the_bce_of_the_perfect_decoder():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 1, 5, 5), dtype=np.uint8)
    x = torch.as_tensor(images).double() / 255.0
    perfect = torch.logit(x.clamp(1e-12, 1 - 1e-12))
    bce = nn.functional.binary_cross_entropy_with_logits(perfect, x, reduction="none")
    assert bce_floor(images) == pytest.approx(bce.flatten(1).sum(1).mean().item(), rel=1e-6)
    other = nn.functional.binary_cross_entropy_with_logits(perfect + 0.3, x, reduction="none")
    assert other.flatten(1).sum(1).mean().item() > bce_floor(images)
    assert bce_floor(np.array([[[[0, 255]]]], dtype=np.uint8)) == 0.0
    assert bce_floor(np.full((1, 1, 1, 2), 255 // 2 + 1, np.uint8)) == pytest.approx(
        2 * -(128 / 255 * math.log(128 / 255) + 127 / 255 * math.log(127 / 255)))


def test_fid_of_a_set_with_itself_is_zero_and_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 6))
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)
    # diagonal covariances commute: FID = ||m1 - m2||^2 + sum (s1 - s2)^2 over the std devs
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    expected = ((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(m1, np.diag(s1 ** 2), m2, np.diag(s2 ** 2)) == pytest.approx(expected)
    # full covariances against Tr((S1^1/2 S2 S1^1/2)^1/2), computed with eigh instead of sqrtm
    c1, c2 = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = c1 @ c1.T + 0.1 * np.eye(4), c2 @ c2.T + 0.1 * np.eye(4)
    expected = _fid_closed_form(s1, s2)
    assert frechet_distance(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(expected, rel=1e-8)
    # and estimated from samples of the two Gaussians, it converges to that value
    x = rng.multivariate_normal(np.zeros(4), s1, 200_000)
    y = rng.multivariate_normal(np.zeros(4), s2, 200_000)
    assert fid(x, y) == pytest.approx(expected, rel=0.02)


def _fid_closed_form(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) by symmetric eigendecompositions only."""
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w.clip(0))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.trace(s1) + np.trace(s2) - 2 * np.sqrt(inner.clip(0)).sum())


def test_fid_keeps_the_sign_of_the_roots_diagonal():
    # (S1 S2)^1/2 is not symmetric: its diagonal can hold negative entries while its trace (the
    # sum of the square roots of the eigenvalues) stays positive. Taking abs() of the complex
    # root instead of its real part would flip them and inflate the trace.
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
        s1, s2 = a @ a.T, b @ b.T
        root = scipy.linalg.sqrtm(s1 @ s2)
        if np.diag(np.real(root)).min() < -0.3:
            break
    else:
        pytest.fail("no covariance pair with a negative diagonal in the root was drawn")
    expected = _fid_closed_form(s1, s2)
    assert frechet_distance(np.zeros(3), s1, np.zeros(3), s2) == pytest.approx(expected, rel=1e-8)


def test_fid_handles_singular_covariances_and_rejects_non_psd_ones():
    rng = np.random.default_rng(1)
    a = np.hstack([rng.normal(size=(500, 3)), np.zeros((500, 2))])  # two dead features
    b = np.hstack([rng.normal(size=(500, 3)) + 1.0, np.zeros((500, 2))])
    # dead (constant) features add nothing: the same value as on the three live ones
    assert fid(a, b) == pytest.approx(fid(a[:, :3], b[:, :3]), rel=1e-9)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="imaginary part"):
        frechet_distance(np.zeros(2), -np.eye(2), np.zeros(2), np.eye(2))


def test_knn_radii_skip_the_point_itself():
    points = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert knn_radii(points, 1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(points, 2).tolist() == [3.0, 2.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="more than k=4 points"):
        knn_radii(points, 4)


def test_precision_recall_oracles():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 5))
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0, k=3) == (0.0, 0.0)
    # fakes covering only one of two far-apart real clusters: all realistic, half the variety
    two = np.vstack([rng.normal(size=(200, 5)), rng.normal(size=(200, 5)) + 50.0])
    one = rng.normal(size=(400, 5))
    precision, recall = precision_recall(two, one, k=3)
    same = precision_recall(two[:200], one, k=3)  # the covered cluster alone: ~0.92 / ~0.92
    assert precision == same[0] and precision > 0.85
    assert recall == pytest.approx(same[1] / 2)  # the far cluster is never covered


def test_active_units_count_the_informative_dimensions_of_a_hand_built_encoder():
    class HandBuilt(VAE):
        kind, image_shape, latent_dim = "hand", (1, 1, 4), 6

        def encode(self, x):
            flat = x.flatten(1)  # (B, 4)
            mu = torch.cat([flat[:, :3],               # 3 dims that follow the image
                            0.05 * flat[:, 3:4],       # varies, but Var < 0.01
                            torch.zeros(len(x), 2)], 1)  # constant: collapsed
            return mu, torch.zeros_like(mu)

    images = torch.as_tensor(np.random.default_rng(0).integers(0, 256, (500, 1, 1, 4)),
                             dtype=torch.uint8)
    mu, logvar = encode(HandBuilt(), images, batch=128)
    active, activity = active_units(mu.numpy()), unit_activity(mu.numpy())
    assert active.tolist() == [True, True, True, False, False, False]
    assert activity[3] < 0.01 and (activity[:3] > 0.05).all() and (activity[4:] == 0).all()


def test_kl_per_dim_matches_torch_distributions():
    rng = np.random.default_rng(0)
    mu, logvar = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    q = Normal(torch.as_tensor(mu), torch.as_tensor(np.exp(0.5 * logvar)))
    expected = kl_divergence(q, Normal(0.0, 1.0)).mean(0).numpy()
    np.testing.assert_allclose(kl_per_dim(mu, logvar), expected, rtol=1e-10)


def test_kl_per_dim_sums_to_the_training_kl():
    rng = np.random.default_rng(1)
    mu, logvar = rng.normal(size=(64, 5)), rng.normal(size=(64, 5))
    per_dim = kl_per_dim(mu, logvar)
    total = StandardNormal(5).kl(torch.from_numpy(mu), torch.from_numpy(logvar), None,
                                 None).mean().item()
    assert per_dim.shape == (5,) and per_dim.sum() == pytest.approx(total)
    # a dimension equal to the prior (mu 0, logvar 0) carries no KL
    mu[:, 2], logvar[:, 2] = 0.0, 0.0
    assert kl_per_dim(mu, logvar)[2] == 0.0


def test_seeded_subsamples_are_sorted_distinct_and_repeat():
    keep = subsample(100, 30, seed=2)
    assert len(set(keep)) == 30 and np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(keep, subsample(100, 30, seed=2))
    assert subsample(10, 30, seed=2).tolist() == list(range(10))


def test_diversity_is_the_mean_pairwise_distance():
    images = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 8.0]]).view(3, 1, 1, 2)
    assert diversity(images) == pytest.approx((5 + 8 + 5) / 3)
    assert diversity(torch.ones(10, 1, 2, 2)) == 0.0
    x = torch.tensor(np.random.default_rng(2).random((7, 1, 4, 4)))
    brute = np.mean([np.linalg.norm((a - b).numpy().ravel())
                     for a, b in itertools.combinations(x, 2)])
    assert diversity(x) == pytest.approx(brute, rel=1e-9)


def test_probe_and_silhouette_on_separable_and_mixed_latents():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(size=(4, 3)) * 20
    separable = centres[labels] + rng.normal(size=(200, 3))
    assert probe_accuracy(separable, labels, separable, labels) == 1.0
    assert silhouette(separable, labels, 1000, seed=0) > 0.8
    mixed = rng.normal(size=(200, 3))
    assert abs(silhouette(mixed, labels, 1000, seed=0)) < 0.1
    assert probe_accuracy(mixed[:100], labels[:100], mixed[100:], labels[100:]) < 0.5


def test_silhouette_oracles():
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    labels = np.repeat([0, 1, 7], 50)
    tight = centres[np.repeat([0, 1, 2], 50)] + rng.normal(0, 0.1, (150, 2))
    assert silhouette(tight, labels) > 0.98
    # one blob, labels at random: no structure, close to 0
    blob = rng.normal(0, 1, (150, 2))
    assert abs(silhouette(blob, rng.permutation(labels))) < 0.1


def test_probe_accuracy_separable_and_chance():
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1, 7], 60)
    points = np.array([[0, 0], [6, 0], [0, 6]])[np.repeat([0, 1, 2], 60)] + rng.normal(0, 0.5, (180, 2))
    assert probe_accuracy(points, labels, points + 0.1, labels) == 1.0
    noise = rng.normal(0, 1, (180, 2))
    assert probe_accuracy(noise, labels, rng.normal(0, 1, (180, 2)), labels) < 0.55


def test_recon_indices_take_the_first_of_each_class_then_the_next():
    labels = np.array([3, 1, 1, 0, 3, 2, 0, 2, 1, 3])
    assert recon_indices(labels, 6).tolist() == [3, 1, 5, 0, 6, 2]
    assert recon_indices(labels, 16).tolist() == [3, 1, 5, 0, 6, 2, 7, 4, 8, 9]


def test_frozen_keys_have_no_dots():
    assert [frozen_key(s) for s in (0.1, 0.5, 1.0, 2.0)] == [
        "sigma_0_1", "sigma_0_5", "sigma_1_0", "sigma_2_0"]


def test_write_npz_is_plain_and_byte_stable(tmp_path):
    arrays = {"mu": np.arange(6, dtype=np.float32).reshape(2, 3), "labels": np.arange(2)}
    write_npz(tmp_path / "a.npz", arrays)
    write_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["labels", "mu"]
        np.testing.assert_array_equal(npz["mu"], arrays["mu"])


# --------------------------------------------------------------------------------------------
# One checkpoint end to end, in process, on tiny random data

TINY = EvaluateConfig(samples=100, iwae_samples=3, iwae_images=12, iwae_batch=5,
                      probe_images=60, silhouette_images=30, diversity_images=20, batch_size=32)


def _tiny_setup():
    rng = np.random.default_rng(0)

    def split(n):
        return (rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
                np.arange(n, dtype=np.int64) % 10)

    train, val, test = split(80), split(30), split(40)
    torch.manual_seed(0)
    classifier = Classifier((1, 28, 28), 10, (4,), 8).eval()
    model = build_model("conv", image_shape=(1, 28, 28), latent_dim=3, channels=(4, 8)).eval()
    return train, val, test, classifier, model


def test_evaluate_checkpoint_gives_every_metric_and_the_arrays_visualize_reads():
    train, val, test, classifier, model = _tiny_setup()
    ref = build_reference(train, val, test, classifier, TINY, 1, torch.device("cpu"))
    assert ref.numbers["iwae_samples"] == 3 and ref.numbers["real_images"] == 30
    result = evaluate_checkpoint(model, ref, classifier, TINY, 1)
    # every metric but the protocol's test NLL, which is computed only where it is asked for
    assert list(result.metrics) == [k for k in METRICS if not k.startswith("test_nll")]
    assert all(math.isfinite(v) for v in result.metrics.values())
    m = result.metrics
    assert m["nelbo"] == pytest.approx(m["recon"] + m["kl"])
    assert m["nelbo_above_floor"] == pytest.approx(m["nelbo"] - ref.numbers["bce_floor_test"])
    assert m["iwae_gain"] >= 0 and 0 <= m["active_units"] <= 3
    assert m["iwae_nll"] == pytest.approx(m["nelbo"] - m["iwae_gain"])
    assert result.details["iwae"]["images"] == 12
    # the standard errors: of the per-image terms over the 40 test images (the same seeded
    # noise as the means), and of FID / P/R over TINY.prior_draws fresh prior draws
    recon, kl = (t.numpy() for t in elbo_per_image(model, ref.test_x, seed=1000 + NOISE_ELBO))
    assert m["recon"] == pytest.approx(recon.mean()) and m["kl"] == pytest.approx(kl.mean())
    assert m["recon_se"] == pytest.approx(scipy.stats.sem(recon))
    assert m["nelbo_se"] == pytest.approx(scipy.stats.sem(recon + kl))
    assert m["bpd_se"] == pytest.approx(m["nelbo_se"] / (784 * math.log(2)))
    assert m["iwae_nll_se"] == pytest.approx(math.hypot(m["nelbo_se"], m["iwae_gain_se"]))
    # the 8-bit rate: the same decoder scored as a continuous Bernoulli on dequantized pixels
    r8, kl8 = (t.numpy() for t in elbo_per_image(model, ref.test_x, "dequantized",
                                                 1000 + NOISE_ELBO,
                                                 make_likelihood("continuous_bernoulli")))
    assert m["bpd_8bit"] == pytest.approx(((r8 + kl8).mean() + 784 * math.log(256))
                                          / (784 * math.log(2)))
    assert m["bpd_8bit_se"] == pytest.approx(scipy.stats.sem(r8 + kl8) / (784 * math.log(2)))
    assert m["bpd_8bit_iwae"] < m["bpd_8bit"]
    assert m["probe_accuracy_se"] == pytest.approx(
        math.sqrt(m["probe_accuracy"] * (1 - m["probe_accuracy"]) / 39))
    assert TINY.prior_draws == 10 and m["fid_se"] > 0 and m["precision_se"] >= 0
    assert m["frozen_diversity_sigma_0_1"] < m["frozen_diversity_sigma_1_0"]
    a = result.arrays
    shapes = {k: (v.shape, v.dtype.name) for k, v in a.items()}
    assert shapes == {
        "mu": ((40, 3), "float32"), "logvar": ((40, 3), "float32"), "labels": ((40,), "int64"),
        "samples": ((100, 1, 28, 28), "float32"), "recon_index": ((16,), "int64"),
        "recon": ((16, 1, 28, 28), "float32"), "frozen_sigmas": ((3,), "float32"),
        "frozen": ((4, 64, 1, 28, 28), "float32")}
    assert a["recon_index"][:10].tolist() == list(range(10))  # first of each class
    np.testing.assert_array_equal(a["frozen_sigmas"], np.float32([0.1, 0.5, 1.0]))
    np.testing.assert_array_equal(a["frozen"][0], a["samples"][:64])  # baseline = the prior set
    assert 0 <= a["samples"].min() and a["samples"].max() <= 1
    np.testing.assert_array_equal(a["labels"], test[1])
    assert len(result.details["kl_per_dim"]) == 3
    # seeded: a second run gives the same numbers, bit for bit
    again = evaluate_checkpoint(model, ref, classifier, TINY, 1)
    assert again.metrics == result.metrics
    np.testing.assert_array_equal(again.arrays["frozen"], a["frozen"])


def test_each_likelihood_gets_its_rate_and_a_binarized_model_none():
    train, val, test, classifier, _ = _tiny_setup()
    ref = build_reference(train, val, test, classifier, TINY, 1, torch.device("cpu"))
    torch.manual_seed(0)
    dl = build_model("mlp", image_shape=(1, 28, 28), latent_dim=3, hidden=(16,),
                     likelihood="discretized_logistic").eval()
    m = evaluate_checkpoint(dl, ref, classifier, TINY, 1).metrics
    # exact probabilities of the levels: the rate is the NELBO in bits, no floor of a BCE
    assert m["bpd_8bit"] == m["bpd"] and "nelbo_above_floor" not in m
    assert list(m) == [k for k in METRICS if k not in ("nelbo_above_floor",
                                                       "nelbo_above_floor_se", "test_nll",
                                                       "test_nll_se")]
    binary = evaluate_checkpoint(build_model("mlp", image_shape=(1, 28, 28), latent_dim=3,
                                             hidden=(16,)).eval(), ref,
                                 classifier, TINY, 1, pixels="binarized").metrics
    assert not any(k.startswith("bpd_8bit") for k in binary)
    # binary pixels have no entropy left for a Bernoulli floor
    assert binary["nelbo_above_floor"] == pytest.approx(binary["nelbo"])


def test_the_iwae_bound_on_the_whole_test_set_is_its_own_mean():
    train, val, test, classifier, model = _tiny_setup()
    whole = TINY.model_copy(update={"iwae_images": len(test[0])})
    ref = build_reference(train, val, test, classifier, whole, 1, torch.device("cpu"))
    result = evaluate_checkpoint(model, ref, classifier, whole, 1)
    assert result.details["iwae"]["images"] == len(test[0])
    assert result.metrics["iwae_nll"] == pytest.approx(result.details["iwae"]["subset_iwae_nll"])


def test_the_protocols_test_nll_is_the_bound_with_its_k_on_every_test_image():
    train, val, test, classifier, model = _tiny_setup()
    ref = build_reference(train, val, test, classifier, TINY, 1, torch.device("cpu"))
    result = evaluate_checkpoint(model, ref, classifier, TINY, 1, nll_samples=7)
    batch = max(1, TINY.iwae_batch * TINY.iwae_samples // 7)   # latents per call as the gain's
    expected, _ = iwae_bound(model, ref.test_x, 7, batch, torch.Generator().manual_seed(1009))
    assert result.metrics["test_nll"] == pytest.approx(expected.mean())
    assert result.metrics["test_nll_se"] == pytest.approx(expected.std(ddof=1)
                                                          / len(expected) ** 0.5)
    assert result.details["iwae"]["test_nll"]["samples"] == 7
    assert result.details["iwae"]["test_nll"]["images"] == len(test[0])


# --------------------------------------------------------------------------------------------
# reports/evaluation.md: every number gets one row and one meaning


def test_every_metric_has_one_row_with_a_meaning_that_fills_in():
    keys = [m.key for m in METRIC_ROWS]
    assert len(keys) == len(set(keys))
    # each number of a checkpoint but standard errors and the frozen table's has a row
    assert set(keys) == {k for k in METRICS
                         if not k.endswith("_se") and not k.startswith("frozen_")}
    ref = {"iwae_samples": 7, "iwae_images": 1234, "samples": 2000, "test_images": 10000}
    sizes = run_sizes(ref, EvaluateConfig())
    for meaning in [m.meaning for m in METRIC_ROWS] + [n[1] for n in OTHER_NUMBERS]:
        text = meaning.format(**sizes)
        assert text.strip() and "{" not in text.replace("{0..255}", "")
    iwae = next(m for m in METRIC_ROWS if m.key == "iwae_gain").meaning.format(**sizes)
    assert "K = 7" in iwae and "1,234 test images" in iwae


def _summary(skipped: bool) -> str:
    ckpt = {m.key: 1.0 for m in METRIC_ROWS} | {"active_units": 3}
    ckpt |= {k: 0.5 for k in METRICS if k.startswith("frozen_")}
    results = {"mlp": {"epoch_01": ckpt, "best": ckpt}}
    reference = {"test_images": 50, "bce_floor_test": 190.0, "bce_floor_val": 188.0,
                 "fid_real": 2.4, "precision_real": 0.9, "recall_real": 0.8, "real_images": 20,
                 "iwae_samples": 4, "iwae_images": 20, "samples": 100}
    classifier = ({"skipped": "the data has one class"} if skipped else
                  {"test_accuracy": 0.9, "channels": [4], "features": 8, "epochs": 1})
    baselines = {"png": {"bpd": 5.2}, "xz": {"bpd": 3.9}, "histogram": {"bpd": 4.6},
                 "test_images": 50}
    return summary_markdown(results, reference, classifier, EvaluateConfig(), 1, "mnist",
                            {"mlp": 4}, baselines, {"mlp": make_likelihood("bernoulli")})


def test_the_summary_renders_each_row_and_its_meaning_from_one_table():
    text = _summary(skipped=False)
    tables, how = text.split("### How each number is computed")
    for m in METRIC_ROWS:
        assert f"| {m.label} | " in tables, m.key                  # its row, ...
        assert how.count(f"(`{m.key}`): ") == 1, m.key              # ... and its meaning once
    assert all(f"- **{name}**: " in how for name, _, _ in OTHER_NUMBERS)
    assert "K = 4 samples from q(z|x)" in how and "more than 0.01" in how
    # one class: no classifier, so the numbers that need one are not explained
    one_class = _summary(skipped=True)
    assert "**One class.** The data has one class." in one_class
    for m in METRIC_ROWS:
        assert (f"(`{m.key}`): " in one_class) != m.classes, m.key
    assert "- **real vs real**" not in one_class and "- **frozen latents**" in one_class
