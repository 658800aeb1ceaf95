"""A likelihood, a prior and a data format added by one class each, in this test process only:
no library file is edited, and the pipeline's own code (params, models, checkpoints, the
training loop, the evaluation, the download and split stages' code) takes them by name."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vaepipe.config import ConfigError, EvaluateConfig, parse_params
from vaepipe.data import catalog
from vaepipe.data.catalog import DataFormatError, DatasetSpec
from vaepipe.data.formats import FORMATS, RawFormat, check_labels, load_raw
from vaepipe.data.sources import fetch_raw
from vaepipe.data.split import write_split
from vaepipe.evaluate.bounds import elbo_metrics, iwae_metrics, scorings_of
from vaepipe.evaluate.classifier import Classifier
from vaepipe.evaluate.evaluation import build_reference, evaluate_checkpoint
from vaepipe.models.likelihoods import LIKELIHOODS, Likelihood
from vaepipe.models.priors import PRIORS, Prior
from vaepipe.models.vae import build_model, model_args
from vaepipe.train.checkpoints import load_checkpoint, save_checkpoint, trained_pixels
from vaepipe.train.loop import fit
from vaepipe.train.objective import elbo_per_image


class BetaPixels(Likelihood):
    """Beta(a, b) per pixel, a and b from the decoder: a normalised density on (0, 1)."""

    name = "test_beta"
    label = "Beta (registered by a test)"
    outputs_per_channel = 2
    trains_on = ("dequantized",)  # a density that is infinite at exact 0 and 1

    @staticmethod
    def _shapes(out):
        a, b = out.chunk(2, dim=1)
        return F.softplus(a) + 0.1, F.softplus(b) + 0.1

    def nll(self, out, x):
        return -torch.distributions.Beta(*self._shapes(out)).log_prob(x.clamp(1e-6, 1 - 1e-6))

    def mean(self, out):
        a, b = self._shapes(out)
        return a / (a + b)


class WideNormal(Prior):
    """N(0, 4 I): no closed-form KL here, so the base class's one-sample estimate is used."""

    name = "test_wide"
    title = "N(0, 4 I)"

    def sample(self, n, generator, encoder):
        return 2.0 * torch.randn((n, self.latent_dim), generator=generator)

    def log_prob(self, z, encoder):
        return torch.distributions.Normal(0.0, 2.0).log_prob(z).sum(-1)


def _grey_images(n, seed):
    """Images of one grey level with a little noise: a model of them beats the uniform 8 bits."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(180, 6, (n, 1, 28, 28)), 0, 255).astype(np.uint8)


def test_a_registered_likelihood_is_named_by_params_and_trained_and_scored_by_name(tmp_path):
    assert LIKELIHOODS["test_beta"] is BetaPixels
    params = parse_params({"mlp": {"likelihood": "test_beta", "latent_dim": 2}})
    with pytest.raises(ConfigError, match="data.binarize: dynamic cannot go with "
                                          "mlp.likelihood: test_beta"):
        parse_params({"data": {"binarize": "dynamic"}, "mlp": {"likelihood": "test_beta"}})
    torch.manual_seed(0)
    model = build_model("mlp", image_shape=(1, 28, 28),
                        **{**model_args("mlp", params.mlp), "hidden": (16,)})
    assert model.out_channels == 2 and model.model_args["likelihood"] == "test_beta"
    pixels = model.likelihood.training_pixels(params.data.dequantize, params.data.binarize)
    assert pixels == "dequantized"
    train, val, test = _grey_images(256, 0), _grey_images(64, 1), _grey_images(40, 2)
    cfg = params.mlp.model_copy(update={"epochs": 3, "batch_size": 32, "lr": 3e-3})
    result = fit(model, train, val, cfg, 1.0, 0, torch.device("cpu"), tmp_path, pixels=pixels,
                 progress=False)
    assert result.history[-1]["val_nelbo"] < result.history[0]["val_nelbo"]
    # the checkpoint describes itself: the likelihood and what it trained on
    loaded, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert isinstance(loaded.likelihood, BetaPixels) and trained_pixels(ckpt) == "dequantized"
    # the evaluation's rate path: the density of dequantized pixels, + D ln 256 nats
    scorings = scorings_of(loaded.likelihood, binarized=False)
    assert scorings["rate"] == (BetaPixels(), "dequantized")
    test_x, seed = torch.as_tensor(test), 5
    m, nelbo, rate_nats = elbo_metrics(loaded, test_x, scorings, np.zeros(40), seed)
    recon, kl = elbo_per_image(loaded, test_x, "dequantized", seed, BetaPixels())
    by_hand = ((recon + kl).mean().item() + 784 * math.log(256)) / (784 * math.log(2))
    assert m["bpd_8bit"] == pytest.approx(by_hand) and m["bpd_8bit"] < 8.0
    assert m["bpd"] == pytest.approx(m["nelbo"] / (784 * math.log(2)))
    iwae, _ = iwae_metrics(loaded, test_x[:8], scorings, 4, 4, 1, False, nelbo, rate_nats)
    assert math.isfinite(iwae["bpd_8bit_iwae"]) and iwae["iwae_gain"] >= 0


def test_a_registered_prior_is_named_by_params_and_used_for_the_kl_samples_and_bound():
    assert PRIORS["test_wide"] is WideNormal
    with pytest.raises(ConfigError, match="conv.prior must be one of standard_normal, "):
        parse_params({"conv": {"prior": "vamp"}})
    params = parse_params({"conv": {"prior": "test_wide", "latent_dim": 3, "channels": [4, 8]}})
    torch.manual_seed(0)
    model = build_model("conv", image_shape=(1, 28, 28), **model_args("conv", params.conv))
    assert isinstance(model.prior, WideNormal) and model.model_args["prior"] == "test_wide"
    # the KL of the ELBO: log q(z | x) - log p(z) at the posterior draw
    x = torch.as_tensor(_grey_images(6, 0)).float() / 255
    out, mu, logvar, z = model(x)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    expected = q.log_prob(z).sum(1) - torch.distributions.Normal(0.0, 2.0).log_prob(z).sum(1)
    torch.testing.assert_close(model.kl(mu, logvar, z), expected)
    draws = model.sample_prior(4000, torch.Generator().manual_seed(0))
    assert draws.shape == (4000, 3) and draws.std().item() == pytest.approx(2.0, rel=0.05)
    # the whole evaluation takes it from the model: samples, FID, frozen latents, IWAE
    rng = np.random.default_rng(0)
    split = [(rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
              np.arange(n, dtype=np.int64) % 10) for n in (60, 30, 40)]
    classifier = Classifier((1, 28, 28), 10, (4,), 8).eval()
    cfg = EvaluateConfig(samples=100, iwae_samples=3, iwae_images=10, prior_draws=2,
                         probe_images=20, silhouette_images=20, diversity_images=10)
    ref = build_reference(*split, classifier, cfg, 1, torch.device("cpu"))
    result = evaluate_checkpoint(model.eval(), ref, classifier, cfg, 1)
    assert math.isfinite(result.metrics["fid"]) and math.isfinite(result.metrics["iwae_nll"])


class NpzSplits(RawFormat):
    """One .npz per split holding ``images`` (N, 1, 8, 8) uint8 and ``labels``."""

    name = "test_npz"
    files = {"train": ("train.npz",), "test": ("test.npz",)}

    def read_split(self, spec, raw_dir, split):
        with np.load(raw_dir / self.files[split][0]) as f:
            images, labels = f["images"], f["labels"].astype(np.int64)
        if images.shape[1:] != spec.image_shape or images.dtype != np.uint8:
            raise DataFormatError(f"{raw_dir / self.files[split][0]}: expected uint8 images "
                                  f"N x {' x '.join(map(str, spec.image_shape))}")
        check_labels(labels, raw_dir / self.files[split][0], len(spec.class_names))
        return images, labels

    def verify(self, spec, out_dir, shown, official_counts):
        for split in self.files:
            self.read_split(spec, out_dir, split)


TINY_NPZ = DatasetSpec(name="tiny-npz", format="test_npz", archives={}, base_urls=(),
                       raw_md5=None, standard_dir=None, counts={"train": 50, "test": 20},
                       image_shape=(1, 8, 8), class_names=("dark", "light"))


# The classes above registered themselves when this module was imported, which pytest does
# for every module before any test runs: they leave the registries until this module's tests
# run, so no other test (a message listing the allowed names, say) sees them.
_REGISTERED = ((LIKELIHOODS, "test_beta"), (PRIORS, "test_wide"), (FORMATS, "test_npz"))
_ENTRIES = {name: registry.pop(name) for registry, name in _REGISTERED}


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    for registry, name in _REGISTERED:
        monkeypatch.setitem(registry, name, _ENTRIES[name])


def _write_npz_mirror(mirror, labels_max=1):
    mirror.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 50), ("test", 20)):
        np.savez(mirror / f"{split}.npz", images=rng.integers(0, 256, (n, 1, 8, 8), np.uint8),
                 labels=np.arange(n) % (labels_max + 1))


def test_a_registered_data_format_is_fetched_checked_and_split_by_the_stages_code(
        tmp_path, monkeypatch):
    monkeypatch.setitem(catalog.DATASETS, TINY_NPZ.name, TINY_NPZ)
    assert parse_params({"data": {"dataset": "tiny-npz"}}).data.dataset == "tiny-npz"
    mirror = tmp_path / "mirror"
    _write_npz_mirror(mirror)
    used = fetch_raw("tiny-npz", tmp_path / "raw", mirror, standard_dirs=(), base_urls=())
    assert used == f"mirror {mirror}"
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["test.npz", "train.npz"]
    train_x, _, test_x, _ = load_raw("tiny-npz", tmp_path / "raw")
    assert train_x.shape == (50, 1, 8, 8) and test_x.shape == (20, 1, 8, 8)
    manifest = write_split(tmp_path / "raw", tmp_path / "processed", "tiny-npz", 0.2, 42)
    assert manifest["counts"] == {"train": 40, "val": 10, "test": 20}
    assert manifest["class_names"] == ["dark", "light"]
    assert manifest["image_shape"] == [1, 8, 8]


def test_a_registered_data_format_rejects_a_bad_source_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setitem(catalog.DATASETS, TINY_NPZ.name, TINY_NPZ)
    mirror = tmp_path / "mirror"
    _write_npz_mirror(mirror, labels_max=2)  # label 2: the spec has two classes
    with pytest.raises(catalog.DataSourceError) as err:
        fetch_raw("tiny-npz", tmp_path / "raw", mirror, standard_dirs=(), base_urls=())
    assert "labels must lie in 0..1" in str(err.value) and "train.npz" in str(err.value)
    assert not (tmp_path / "raw").exists()


def test_a_checkpoint_written_before_likelihoods_kept_their_parameters_still_loads(tmp_path):
    # then model_args named the likelihood alone, obs_std sat in the stored params, and no
    # checkpoint said what it trained on
    model = build_model("mlp", image_shape=(1, 28, 28), latent_dim=2, hidden=(8,),
                        likelihood={"name": "gaussian", "obs_std": 0.5})
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, {"params": {"mlp": {"likelihood": "gaussian", "obs_std": 0.5},
                                             "data": {"binarize": "dynamic"}}})
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_args"]["likelihood"] = "gaussian"
    del ckpt["model_args"]["prior"]
    torch.save(ckpt, path)
    loaded, ckpt = load_checkpoint(path)
    assert loaded.likelihood.obs_std == 0.5 and loaded.prior.name == "standard_normal"
    assert trained_pixels(ckpt) == "binarized"
