"""The new likelihoods and the binarized protocol through real DVC (`dvc exp run -S`), on the
tiny pipeline, and the baselines the split stage writes."""
import json
import math
import re

import numpy as np
import pytest

from vaepipe.data.baselines import BASELINES, baseline_rates, png_bits, read_baselines, verdict
from vaepipe.train.checkpoints import load_checkpoint


def ran(stdout: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", stdout))


def rate_keys(metrics: dict) -> set[str]:
    return {k for k in metrics if k.startswith("bpd_8bit")}


RATE_KEYS = {"bpd_8bit", "bpd_8bit_se", "bpd_8bit_iwae", "bpd_8bit_iwae_se"}


def test_the_tiny_pipeline_reports_rates_beside_the_baselines(tiny_repro):
    project = tiny_repro
    baselines = read_baselines(project.root / "reports/baselines.json")
    assert baselines["test_images"] == 50
    for key in BASELINES:
        assert 0 < baselines[key]["bpd"] < 10, key
    metrics = project.read_json("reports/evaluate.json")
    for kind in ("mlp", "conv"):
        best = metrics[kind]["best"]
        assert rate_keys(best) == RATE_KEYS
        # the IWAE bound is the tighter one; both are finite rates
        assert best["bpd_8bit_iwae"] <= best["bpd_8bit"] + 3 * best["bpd_8bit_iwae_se"]
        assert all(math.isfinite(best[k]) for k in RATE_KEYS)
    summary = (project.root / "reports/evaluation.md").read_text()
    assert summary.startswith("### Bits per dimension of the fashion-mnist test images")
    assert "| PNG (Pillow, optimize=True, one file per image) | | |" in summary
    assert "Bernoulli, scored as a continuous Bernoulli" in summary
    report = (project.root / "reports/report.md").read_text()
    assert "**Against codecs.** The same test images cost PNG" in report
    shown = project.dvc("metrics", "show").stdout
    assert "reports/baselines.json" in shown and "png.bpd" in shown


@pytest.mark.slow
@pytest.mark.parametrize("setting, trained, check", [
    ("conv.likelihood=discretized_logistic", {"train-conv"}, "conv"),
    ("mlp.likelihood=continuous_bernoulli", {"train-mlp"}, "mlp"),
    ("data.binarize=dynamic", {"train-mlp", "train-conv"}, "binarized"),
], ids=["discretized_logistic", "continuous_bernoulli", "binarize"])
def test_each_protocol_runs_end_to_end_as_an_experiment(tiny_repro, setting, trained, check):
    project = tiny_repro
    before = project.read_json("reports/evaluate.json")
    exp = project.dvc("exp", "run", "-S", setting)
    stages = ran(exp.stdout)
    assert {"evaluate", "visualize"} | trained <= stages
    # the classifier reads grey images and no VAE key: it is reused, as are data and the sweep
    assert not stages & {"download", "split", "train-classifier", "beta-sweep@0.1",
                         "sweep-table"}
    assert not stages & ({"train-mlp", "train-conv"} - trained)
    after = project.read_json("reports/evaluate.json")
    diff = json.loads(project.dvc("metrics", "diff", "--json").stdout)["reports/evaluate.json"]
    summary = (project.root / "reports/evaluation.md").read_text()
    if check == "binarized":
        for kind in ("mlp", "conv"):
            ckpt = load_checkpoint(project.root / f"models/{kind}/best.pt")[1]
            assert ckpt["params"]["data"]["binarize"] == "dynamic"
            # no 8-bit rate of a model of binary images; its NLL in nats
            assert rate_keys(after[kind]["best"]) == set()
            assert after[kind]["best"]["nelbo_above_floor"] == pytest.approx(
                after[kind]["best"]["nelbo"])              # binary pixels: a floor of 0
            assert diff[f"{kind}.best.bpd_8bit"]["new"] is None
            assert f"{kind}.best.iwae_nll" in diff
        assert "trained on binarized pixels (`data.binarize: dynamic`)" in summary
        return
    kind = check
    model, ckpt = load_checkpoint(project.root / f"models/{kind}/best.pt")
    likelihood = setting.split("=")[1]
    assert model.likelihood.name == likelihood == ckpt["model_args"]["likelihood"]
    assert rate_keys(after[kind]["best"]) == RATE_KEYS
    changed = diff[f"{kind}.best.bpd_8bit"]
    assert changed["old"] == before[kind]["best"]["bpd_8bit"] != changed["new"]
    assert "nelbo_above_floor" not in after[kind]["best"]  # a Bernoulli floor only
    other = "conv" if kind == "mlp" else "mlp"
    assert after[other] == before[other]                   # the other model untouched
    assert {"continuous_bernoulli": "| continuous Bernoulli |",
            "discretized_logistic": "| discretized logistic |"}[likelihood] in summary
    if likelihood == "discretized_logistic":
        # an exact probability of each level: no dequantization, the rate is recipe 000's bpd
        assert after[kind]["best"]["bpd_8bit"] == pytest.approx(after[kind]["best"]["bpd"])


# --------------------------------------------------------------------------------------------
# The baselines


def test_png_counts_every_byte_of_each_file():
    flat = np.zeros((3, 1, 28, 28), np.uint8)
    noisy = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    assert (png_bits(flat) < 8 * 150).all()                 # headers and a tiny IDAT
    assert (png_bits(noisy) > 8 * 784).all()                # noise does not compress
    colour = np.random.default_rng(1).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    assert (png_bits(colour) > 8 * 3 * 1024).all()


def test_baselines_rank_structure_and_name_the_winners():
    rng = np.random.default_rng(0)
    # images with a fixed layout: a per-pixel histogram learns it, xz sees repeats
    base = rng.integers(0, 256, (1, 1, 28, 28), dtype=np.uint8)
    train = np.repeat(base, 300, axis=0)
    test = np.repeat(base, 50, axis=0)
    rates = baseline_rates(train, test)
    # add-one smoothing: each seen level gets (300 + 1) / (300 + 256) of the mass
    assert rates["histogram"]["bpd"] == pytest.approx(math.log2(556 / 301))
    assert rates["histogram"]["bpd_se"] == 0 and rates["xz"]["bpd"] < 0.25  # about one image of 50
    assert rates["png"]["bpd"] > 5                          # one image at a time
    assert verdict(0.05, rates).startswith("beats PNG")
    assert verdict(9.0, rates) == "beats none"
    assert verdict(4.0, {"png": {"bpd": 5}, "xz": {"bpd": 3}, "histogram": {"bpd": 4.5}}) == \
        "beats PNG and the histogram"


def test_a_missing_or_incomplete_baselines_file_names_itself(tmp_path):
    with pytest.raises(ValueError, match=r"baselines\.json: not found; run `dvc repro split`"):
        read_baselines(tmp_path / "baselines.json")
    (tmp_path / "baselines.json").write_text('{"png": {"bpd": 5.0}}')
    with pytest.raises(ValueError, match="needs bits/dim of png, xz, histogram"):
        read_baselines(tmp_path / "baselines.json")
