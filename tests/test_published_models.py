"""The literature's Fashion-MNIST models and protocol, checked against hand computations: the
VampPrior, two stochastic levels, AdamNormGrad, early stopping, the file-order split and the
seed-777 binarization; and each option end to end through real DVC on the tiny pipeline."""
import json
import math

import numpy as np
import pytest
import torch

from vaepipe.config import ConfigError, parse_params
from vaepipe.data.split import split_train_val
from vaepipe.evaluate.bounds import iwae_bound
from vaepipe.models.batches import binarize_eval_splits
from vaepipe.models.priors import Prior, StandardNormal, VampPrior
from vaepipe.models.vae import build_model, model_args
from vaepipe.train.checkpoints import load_checkpoint, save_checkpoint
from vaepipe.train.loop import AdamNormGrad, FitResult, fit
from vaepipe.train.objective import vae_loss


def normal_log_density(z, mu, var):
    """log N(z; mu, diag(var)) written out, float64."""
    z, mu, var = (np.asarray(a, np.float64) for a in (z, mu, var))
    return float(np.sum(-0.5 * ((z - mu) ** 2 / var + np.log(2 * np.pi * var))))


def test_the_vampprior_density_is_the_mixture_of_the_encoder_at_its_pseudo_inputs():
    torch.manual_seed(0)
    model = build_model("mlp", image_shape=(1, 28, 28), latent_dim=3, hidden=(8,),
                        prior={"name": "vampprior", "pseudo_inputs": 4})
    prior = model.prior
    assert isinstance(prior, VampPrior) and model.model_args["prior"] == {
        "name": "vampprior", "pseudo_inputs": 4}
    # the pseudo-inputs are images in [0, 1], drawn around 0.05 as the authors' code does
    u = prior.inputs().detach()
    assert u.shape == (4, 1, 28, 28) and 0.0 <= u.min() and u.max() <= 1.0
    assert abs(prior.raw_inputs.mean().item() - 0.05) < 0.002
    with torch.no_grad():
        mu, logvar = model.encode(u)
        z = torch.randn(5, 3)
        got = prior.log_prob(z, model.encode).numpy()
    var = logvar.exp().numpy()
    for i in range(5):
        parts = [normal_log_density(z[i], mu[k], var[k]) for k in range(4)]
        expected = np.logaddexp.reduce(parts) - math.log(4)
        assert got[i] == pytest.approx(expected, abs=1e-4)
    # the blocks of the log-density do not change it (more latents than one block holds)
    many = torch.randn(600, 3)
    with torch.no_grad():
        whole = prior.log_prob(many, model.encode)
        rows = torch.cat([prior.log_prob(many[i:i + 7], model.encode) for i in range(0, 600, 7)])
    torch.testing.assert_close(whole, rows)


def test_one_pseudo_input_is_that_one_gaussian_and_samples_follow_the_mixture():
    torch.manual_seed(1)
    model = build_model("mlp", image_shape=(1, 6, 6), latent_dim=2, hidden=(8,),
                        prior={"name": "vampprior", "pseudo_inputs": 1})
    with torch.no_grad():
        mu, logvar = model.encode(model.prior.inputs())
        z = torch.randn(50, 2)
        gaussian = torch.distributions.Normal(mu[0], (0.5 * logvar[0]).exp()).log_prob(z).sum(-1)
        torch.testing.assert_close(model.prior.log_prob(z, model.encode), gaussian)
    # drawing runs the encoder, but a draw carries no graph (samples are decoded, not trained)
    draws = model.sample_prior(20000, torch.Generator().manual_seed(0))
    assert not draws.requires_grad
    assert draws.mean(0).numpy() == pytest.approx(mu[0].numpy(), abs=0.03)
    assert draws.var(0).numpy() == pytest.approx(logvar[0].exp().numpy(), rel=0.05)
    # no closed form: the KL of the ELBO is log q(z|x) - log p(z) at the draw
    x = torch.rand(3, 1, 6, 6)
    out, q_mu, q_logvar, q_z = model(x)
    q = torch.distributions.Normal(q_mu, (0.5 * q_logvar).exp()).log_prob(q_z).sum(1)
    torch.testing.assert_close(model.kl(q_mu, q_logvar, q_z),
                               q - model.prior.log_prob(q_z, model.encode))


def test_a_batchnorm_encoder_encodes_the_pseudo_inputs_with_its_running_statistics():
    torch.manual_seed(6)
    model = build_model("conv", image_shape=(1, 28, 28), latent_dim=3, channels=(4, 8),
                        prior={"name": "vampprior", "pseudo_inputs": 5}).train()
    norm = model.encoder[1]
    before = norm.running_mean.clone()
    z = torch.randn(4, 3)
    log_p = model.prior.log_prob(z, model.encode)
    assert torch.equal(norm.running_mean, before) and norm.training   # untouched, mode kept
    with torch.no_grad():
        assert torch.allclose(model.eval().prior.log_prob(z, model.encode), log_p)
    model.train()(torch.rand(6, 1, 28, 28))                           # a data batch does move them
    assert not torch.equal(norm.running_mean, before)


def test_the_single_sample_kl_averages_to_the_closed_form_under_n01():
    torch.manual_seed(2)
    mu, logvar = torch.randn(1, 4) * 0.8, torch.randn(1, 4) * 0.5
    prior = StandardNormal(4)
    closed = prior.kl(mu, logvar, None, None).item()
    n = 400_000
    z = mu + (0.5 * logvar).exp() * torch.randn(n, 4, dtype=torch.float64)
    estimates = Prior.kl(prior, mu.double().expand(n, 4), logvar.double().expand(n, 4), z, None)
    se = estimates.std().item() / math.sqrt(n)
    assert abs(estimates.mean().item() - closed) < 4 * se
    # and the model switch picks it
    model = build_model("mlp", image_shape=(1, 6, 6), latent_dim=4, hidden=(8,),
                        kl_estimate="single_sample")
    z1 = mu + (0.5 * logvar).exp() * torch.randn(1, 4)
    torch.testing.assert_close(model.kl(mu, logvar, z1), Prior.kl(prior, mu, logvar, z1, None))
    assert model.model_args["kl_estimate"] == "single_sample"


def test_adamnormgrad_steps_as_adam_on_each_tensors_normalised_gradient():
    torch.manual_seed(3)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours, adam = AdamNormGrad(a, lr=0.01), torch.optim.Adam(b, lr=0.01)
    for step in range(4):
        grads = [torch.randn_like(p) * (10 ** step) for p in a]
        for p, g in zip(a, grads):
            p.grad = g.clone()
        for p, g in zip(b, grads):
            p.grad = g / (g.norm() + 1e-7)
        ours.step()
        adam.step()
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q)
    with pytest.raises(ValueError, match="no closure"):
        ours.step(lambda: 0.0)


@pytest.mark.parametrize("kind, args", [
    ("mlp", {"hidden": [16, 16], "gated": True}),
    ("conv", {"channels": [4, 8], "gated": True}),
    ("mlp", {"hidden": [16], "gated": False, "prior": {"name": "vampprior",
                                                       "pseudo_inputs": 3}}),
], ids=["hvae", "convhvae", "hvae-vampprior"])
def test_a_two_level_models_terms_add_up_and_its_one_sample_bound_is_its_elbo(kind, args,
                                                                             tmp_path):
    torch.manual_seed(4)
    model = build_model(kind, image_shape=(1, 28, 28), latent_dim=3, levels=2,
                        kl_estimate="single_sample", **args).eval()
    x = torch.bernoulli(torch.rand(6, 1, 28, 28))
    with torch.no_grad():
        out, mu, logvar, z = model(x, torch.Generator().manual_seed(9))
        assert mu.shape == logvar.shape == z.shape == (6, 6)   # [z2, z1]
        z2, z1 = z[:, :3], z[:, 3:]
        q2 = torch.distributions.Normal(mu[:, :3], (0.5 * logvar[:, :3]).exp())
        q1 = torch.distributions.Normal(mu[:, 3:], (0.5 * logvar[:, 3:]).exp())
        p_mu, p_logvar = model.prior_z1(z2)
        p1 = torch.distributions.Normal(p_mu, (0.5 * p_logvar).exp())
        by_hand = (q2.log_prob(z2).sum(1) + q1.log_prob(z1).sum(1)
                   - model.prior.log_prob(z2, model.encode) - p1.log_prob(z1).sum(1))
        torch.testing.assert_close(model.kl(mu, logvar, z), by_hand)
        terms = vae_loss(model, x, out, mu, logvar, z)
        recon = model.likelihood.recon_per_sample(out, x)
        assert terms.loss.item() == pytest.approx((recon + by_hand).mean().item(), rel=1e-5)
        # K = 1: the importance-weighted bound is the ELBO of the same noise
        images = (x * 255).to(torch.uint8)
        iwae, mc = iwae_bound(model, images, 1, 6, torch.Generator().manual_seed(9))
    np.testing.assert_allclose(iwae, (recon + by_hand).double().numpy(), rtol=1e-5)
    np.testing.assert_allclose(iwae, mc)
    # the figures read the top level: encode is q(z2 | x), decode(z2) an image
    assert model.encode(x)[0].shape == (6, 3) and model.latent_dim == 3
    assert model.decode(z2).shape == (6, 1, 28, 28)
    # a checkpoint rebuilds the two-level class from its model_args alone
    save_checkpoint(tmp_path / "m.pt", model, {"epoch": 1})
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    assert type(loaded) is type(model) and ckpt["model_args"]["levels"] == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), model.encode(x))


def test_the_two_level_models_are_the_authors_sizes():
    hvae = build_model("mlp", image_shape=(1, 28, 28), latent_dim=40, hidden=(300, 300),
                       gated=True, levels=2)
    vae = build_model("mlp", image_shape=(1, 28, 28), latent_dim=40, hidden=(300, 300),
                      gated=True)
    # counted from the VampPrior code's layer lists (GatedDense = two Linears)
    assert sum(p.numel() for p in vae.parameters()) == 1_116_864
    assert sum(p.numel() for p in hvae.parameters()) == 2_431_024
    conv = build_model("conv", image_shape=(1, 28, 28), latent_dim=40, channels=(32, 64),
                       gated=True, levels=2)
    assert conv.q_z2[-2].conv.out_channels == 2 * 6          # 6 maps of 7 x 7 = 294 features
    assert conv.q_z2_heads.mu.in_features == 294


def authors_stop(val_losses, warmup, patience):
    """The VampPrior code's loop over a validation history: the epoch it breaks after and its
    best epoch (the model it saves)."""
    best, best_epoch, e = math.inf, 0, 0
    for epoch, loss in enumerate(val_losses, 1):
        if loss < best:
            e, best, best_epoch = 0, loss, epoch
        else:
            e += 1
            if epoch < warmup:
                e = 0
            if e > patience:
                return epoch, best_epoch
    return len(val_losses), best_epoch


@pytest.mark.parametrize("seed", [*range(6), "best-in-warm-up"])
def test_early_stopping_stops_where_the_authors_loop_does(seed):
    warmup, patience = 10, 4
    if seed == "best-in-warm-up":
        # best at epoch 3, worse ever after: the count starts at the warm-up's last epoch
        losses = [5.0, 4.0, 3.0] + [4.0 + 0.1 * i for i in range(30)]
        assert authors_stop(losses, warmup, patience) == (14, 3)
    else:
        # a validation curve that falls, then wanders: where it stops depends on the noise
        rng = np.random.default_rng(seed)
        losses = list(100 * np.exp(-np.arange(60) / 8) + rng.normal(0, 1.5, 60).cumsum() * 0.3)
    stop, best = authors_stop(losses, warmup, patience)
    result = FitResult(patience=patience, warmup_end=warmup)
    for epoch, loss in enumerate(losses, 1):
        if result.stopped_early:
            break
        result.history.append({"epoch": epoch, "val_loss": loss})
        if loss < result.best.get("val_loss", math.inf):
            result.best_epoch, result.best = epoch, {"val_loss": loss}
    assert (len(result.history), result.best_epoch) == (stop, best)


def test_a_fit_with_patience_stops_records_it_and_resumes_nothing_after(tmp_path):
    cfg = parse_params({"mlp": {"epochs": 40, "hidden": [8], "latent_dim": 2, "batch_size": 50,
                                "warmup_epochs": 2, "patience": 1, "lr": 0.05}}).mlp
    torch.manual_seed(5)
    model = build_model("mlp", image_shape=(1, 6, 6), **model_args("mlp", cfg))
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (100, 1, 6, 6), dtype=np.uint8)
    val = rng.integers(0, 256, (40, 1, 6, 6), dtype=np.uint8)
    result = fit(model, train, val, cfg, 1.0, 0, torch.device("cpu"), checkpoint_dir=tmp_path,
                 progress=False)
    stop = len(result.history)
    assert result.stopped_early and stop < 40
    assert stop - max(result.best_epoch, 1) == 2                 # patience 1, exceeded by one
    final = torch.load(tmp_path / "final.pt", weights_only=False)
    assert final["epoch"] == stop
    from vaepipe.train.loop import summarize
    metrics = summarize(result, torch.device("cpu"), model)
    assert metrics["epochs"] == stop and metrics["stopped_early"] is True
    assert metrics["patience"] == 1


def test_the_file_order_split_validates_on_the_last_images():
    train, val = split_train_val(60000, 0.16667, 42, "file")
    assert (train == np.arange(50000)).all() and (val == np.arange(50000, 60000)).all()
    seeded = split_train_val(60000, 0.16667, 42)
    assert len(seeded[1]) == 10000 and not (seeded[1] == val).all()
    with pytest.raises(ValueError, match="seeded or file"):
        split_train_val(10, 0.5, 0, "shuffled")


def test_the_seed_777_binarization_is_the_vampprior_codes_draw():
    rng = np.random.default_rng(0)
    val = rng.integers(0, 256, (30, 1, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (20, 1, 28, 28), dtype=np.uint8)
    got_val, got_test = binarize_eval_splits(val, test, 777)
    # their lines: x / 255. as float64, flattened, then
    # np.random.seed(777); x_val = np.random.binomial(1, x_val); x_test = np.random.binomial(...)
    np.random.seed(777)
    x_val = np.random.binomial(1, val.reshape(30, -1) / 255.)
    x_test = np.random.binomial(1, test.reshape(20, -1) / 255.)
    assert (got_val.reshape(30, -1) == x_val * 255).all()
    assert (got_test.reshape(20, -1) == x_test * 255).all()
    assert got_val.dtype == np.uint8 and set(np.unique(got_test)) == {0, 255}
    # without a seed: the pipeline's own draw, one per split, as before
    other_val, _ = binarize_eval_splits(val, test)
    assert not (other_val == got_val).all()
    # the evaluate stage scores a binarized model on exactly these test bits
    from vaepipe.config import EvaluateConfig
    from vaepipe.evaluate.evaluation import build_reference
    labels = {n: np.zeros(n, np.int64) for n in (30, 20)}
    ref = build_reference((val, labels[30]), (val, labels[30]), (test, labels[20]), None,
                          EvaluateConfig(), 0, torch.device("cpu"), binarize_seed=777)
    assert (ref.test_binary.numpy() == got_test).all()


def test_protocol_keys_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="conv.gated: true is the ConvHVAE's"):
        parse_params({"conv": {"gated": True}})
    with pytest.raises(ConfigError, match="evaluate.nll_samples has a key 'hvae'"):
        parse_params({"evaluate": {"nll_samples": {"hvae": 5000}}})
    with pytest.raises(ConfigError, match="mlp.levels must be one of 1, 2; got 3"):
        parse_params({"mlp": {"levels": 3}})
    with pytest.raises(ConfigError, match="data.split_order must be one of seeded, file"):
        parse_params({"data": {"split_order": "random"}})
    with pytest.raises(ConfigError, match="mlp.prior must be one of standard_normal, vampprior"):
        parse_params({"mlp": {"prior": "vamp"}})


@pytest.mark.slow
@pytest.mark.parametrize("settings, model", [
    (["data.split_order=file", "data.binarize=dynamic", "data.binarize_seed=777",
      "mlp.prior=vampprior", "mlp.pseudo_inputs=5", "mlp.levels=2", "mlp.gated=true",
      "mlp.kl_estimate=single_sample", "mlp.optimizer=adamnormgrad", "mlp.epochs=8",
      "mlp.warmup_epochs=2", "mlp.patience=1", "mlp.lr=0.05", "evaluate.nll_samples.mlp=16"],
     "mlp"),
    (["conv.levels=2", "conv.gated=true", "conv.prior=vampprior", "conv.pseudo_inputs=3",
      "evaluate.nll_samples.conv=8"], "conv"),
], ids=["hvae-vampprior-protocol", "convhvae"])
def test_each_published_option_runs_as_an_experiment(tiny_repro, settings, model):
    project = tiny_repro
    before = project.read_json("reports/evaluate.json")
    args = [a for s in settings for a in ("-S", s)]
    project.dvc("exp", "run", *args)
    diff = json.loads(project.dvc("metrics", "diff", "--json").stdout)
    evaluated = diff["reports/evaluate.json"]
    # the protocol's test NLL on the best checkpoint only, a new key beside the cheap bound
    assert evaluated[f"{model}.best.test_nll"]["old"] is None
    after = project.read_json("reports/evaluate.json")
    best = after[model]["best"]
    assert math.isfinite(best["test_nll"]) and best["test_nll_se"] > 0
    assert "test_nll" not in after[model]["epoch_01"]
    details = project.read_json("reports/evaluate_details.json")
    k = int(settings[-1].split("=")[1])
    assert details[model]["best"]["iwae"]["test_nll"]["samples"] == k
    loaded, ckpt = load_checkpoint(project.root / f"models/{model}/best.pt")
    assert ckpt["model_args"]["levels"] == 2 and loaded.prior.name == "vampprior"
    other = "conv" if model == "mlp" else "mlp"
    if model == "conv":
        assert after[other] == before[other]            # the MLP untouched
        return
    assert ckpt["params"]["data"]["binarize_seed"] == 777
    trained = diff["reports/train/mlp.json"]
    assert trained["stopped_early"]["old"] is None and trained["patience"]["new"] == 1
    assert ckpt["optimizer"]["class"] == "AdamNormGrad"
    manifest, = project.root.glob("data/processed/*/manifest.json")
    assert json.loads(manifest.read_text())["params"]["split_order"] == "file"


ROWS = ("vae-gaussian", "vae-vampprior", "hvae-gaussian", "hvae-vampprior",
        "convhvae-gaussian", "convhvae-vampprior")


@pytest.mark.parametrize("row", ROWS)
def test_each_published_rows_command_sets_the_protocol(row, tmp_path):
    import shlex
    import shutil
    import subprocess
    from pathlib import Path

    from dvc.utils.hydra import apply_overrides

    from vaepipe.config import load_params

    root = Path(__file__).resolve().parent.parent
    line = subprocess.run(["make", "-s", "-n", "-C", str(root), "published", f"ROW={row}"],
                          capture_output=True, text=True, check=True).stdout.strip()
    words = shlex.split(line.splitlines()[-1])
    assert words[words.index("dvc"):][:5] == ["dvc", "exp", "run", "-n", f"fmnist-{row}"]
    overrides = [words[i + 1] for i, w in enumerate(words) if w == "-S"]
    params = tmp_path / "params.yaml"
    shutil.copy(root / "params.yaml", params)
    apply_overrides(str(params), overrides)         # what `dvc exp run -S` does to the file
    p = load_params(params)
    kind = "conv" if row.startswith("conv") else "mlp"
    section = getattr(p, kind)
    assert (p.data.split_order, p.data.binarize, p.data.binarize_seed) == ("file", "dynamic", 777)
    assert int(60000 * p.data.val_fraction) == 10000
    assert (section.gated, section.latent_dim, section.kl_estimate, section.optimizer,
            section.lr, section.batch_size, section.kl_schedule, section.warmup_epochs,
            section.epochs, section.patience) == (True, 40, "single_sample", "adamnormgrad",
                                                  0.0005, 100, "linear", 100, 2000, 50)
    assert section.levels == (1 if row.startswith("vae") else 2)
    assert section.prior == ("vampprior" if row.endswith("vampprior") else "standard_normal")
    assert section.pseudo_inputs == 500
    assert p.evaluate.nll_samples == {"mlp": 0, "conv": 0, kind: 5000}
    if kind == "mlp":
        assert section.hidden == (300, 300)
    wrong = subprocess.run(["make", "-s", "-n", "-C", str(root), "published", "ROW=vae"],
                           capture_output=True, text=True)
    assert wrong.returncode != 0 and "ROW must be one of: vae-gaussian" in wrong.stderr
