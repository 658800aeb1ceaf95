"""``reports/evaluation.md``: the evaluation's numbers as tables, and how each was computed.

:data:`METRIC_ROWS` is the one place that says what each number of a checkpoint in
``reports/evaluate.json`` is: its row label, its format and one line on what it means and how it
is computed; :data:`OTHER_NUMBERS` does the same for the page's other tables. Headings are
``###`` so the report can embed the page as it is.
"""
from __future__ import annotations

from typing import NamedTuple

from vaepipe.config import EvaluateConfig
from vaepipe.data.baselines import BASELINE_LABELS, verdict
from vaepipe.data.names import markdown_text
from vaepipe.evaluate.evaluation import FROZEN_SIGMAS, frozen_key
from vaepipe.evaluate.measures import ACTIVE_THRESHOLD
from vaepipe.models.vae import model_title


class Metric(NamedTuple):
    """One number of each checkpoint: ``meaning`` is one line whose ``{fields}`` are the run's
    sample sizes (:func:`run_sizes`); ``classes``: it needs the feature classifier, which a
    dataset of one class has not."""

    key: str      # in reports/evaluate.json
    label: str    # its row in the per-model tables; a bare "|" would split the cell: escaped
    fmt: str
    meaning: str
    classes: bool = False


METRIC_ROWS = (
    Metric("bpd_8bit", "8-bit rate, ELBO (bits/dim)", ".3f",
           "-log2 P(x) per pixel value of the 8-bit test images x in {{0..255}}^D, what a "
           "lossless code built from the model would need: uniform dequantization y = (x + u) / "
           "256 gives -log P(x) <= E_u[-log p(y)] + D ln 256 (Theis et al. 2016), and the NELBO "
           "bounds -log p(y). A Bernoulli-logit decoder is scored with the continuous Bernoulli "
           "of the same lambda = sigmoid(logits) (Loaiza-Ganem & Cunningham 2019), the density "
           "its cross-entropy lacks the normaliser of; a Gaussian with its own density; the "
           "discretized logistic gives P(x) itself, with no dequantization."),
    Metric("bpd_8bit_iwae", "8-bit rate, IWAE (bits/dim)", ".3f",
           "the same rate with -log p(y) bounded by the IWAE bound instead: the whole-set value "
           "minus the importance-weighting gain on the IWAE subset (below)."),
    Metric("recon", r"reconstruction -log p(x \| z) (nats)", ".2f",
           "the model's own likelihood summed over pixels, by "
           "`vaepipe.train.objective.elbo_per_image` "
           "on the whole test set with one seeded posterior sample per image (a continuous "
           "Bernoulli model scores dequantized pixels, as it trained; a binarized model one "
           "fixed binarization)."),
    Metric("kl", r"KL(q(z \| x) ‖ p(z)) (nats)", ".2f",
           "the KL of the same posteriors from the prior, summed over latent dimensions: in "
           "closed form for N(0, I) (unless the model trained with `kl_estimate: "
           "single_sample`), else log q(z|x) − log p(z) at the seeded posterior draw; a "
           "two-level model adds z1's KL from p(z1 | z2)."),
    Metric("nelbo", "NELBO (nats)", ".2f", "reconstruction + KL."),
    Metric("bpd", "recipe 000's bits/dim: NELBO / (D ln 2), not a rate", ".4f",
           "NELBO / (pixels × ln 2), as recipe 000 defines it. With the Bernoulli likelihood on "
           "grey levels this is no rate of the data (the cross-entropy is not a density over "
           "8-bit values); the 8-bit rate is."),
    Metric("nelbo_above_floor", "NELBO above the BCE floor (nats)", ".2f",
           "NELBO − the test set's BCE floor (Bernoulli models; the floor: below)."),
    Metric("iwae_nll", "IWAE bound on -log p(x) (nats)", ".2f",
           "test-set NELBO − IWAE gain: an estimate of the importance-weighted bound's test-set "
           "mean whose error is the gain's, not the subset's spread of -log p(x); its standard "
           "error combines the NELBO's and the gain's as independent. When the subset is the "
           "whole test set (`-S evaluate.iwae_images=10000`, the literature's protocol with "
           "`evaluate.iwae_samples=5000`), the bound is the IWAE mean itself."),
    Metric("test_nll", "test NLL, the literature's protocol (nats)", ".2f",
           "the importance-weighted bound with K = `evaluate.nll_samples` samples (5000 in the "
           "literature) on every test image, scored on the best checkpoint only where it is "
           "asked for; `reports/evaluate_details.json` has its K and its time."),
    Metric("iwae_gain", "IWAE gain over the ELBO (nats)", ".2f",
           "the importance-weighted bound (Burda et al. 2015) with K = {k} samples from q(z|x) "
           "(log-sum-exp in float64; the decoder runs on {iwae_batch} × K latents at a time), "
           "subtracted from the Monte-Carlo NELBO of the same latents, averaged over a seeded "
           "subset of {iwae_images:,} test images."),
    Metric("active_units", "active units", "d",
           "latent dimensions whose posterior mean varies across test images by more than "
           "{active_threshold:g} (Cov_x E_q[z_u] > {active_threshold:g}, Burda et al.); the KL "
           "of each dimension is in `reports/evaluate_details.json`."),
    Metric("fid", "FID, prior samples", ".2f",
           "Fréchet distance between Gaussians fitted to the feature classifier's penultimate "
           "features of {samples:,} prior samples z ~ p(z) (the model's prior) decoded to the likelihood's mean "
           "image (sigmoid(logits) for the Bernoulli), and of all {test_images:,} test images "
           "(`scipy.linalg.sqrtm`, tiny imaginary parts dropped). Not comparable with Inception "
           "FIDs from papers.", classes=True),
    Metric("precision", "precision (k-NN)", ".3f",
           "Kynkäänniemi et al. 2019 with k = {pr_neighbours} in the same feature space, "
           "{samples:,} prior samples against a seeded subset of as many test images: the share "
           "of samples inside the test images' manifold (the union of balls around each image "
           "reaching its k-th nearest neighbour).", classes=True),
    Metric("recall", "recall (k-NN)", ".3f",
           "the share of those test images inside the samples' manifold, built the same way.",
           classes=True),
    Metric("fid_recon", "FID, reconstructions", ".2f",
           "the mean images of decode(mu) of the same {samples:,} seeded test images against all "
           "test images, as for the samples.", classes=True),
    Metric("probe_accuracy", "linear probe accuracy", ".3f",
           "logistic regression (standardised inputs) on the posterior means of "
           "{probe_images:,} seeded training images, scored on the test set.", classes=True),
    Metric("silhouette", "silhouette of latent means by class", ".3f",
           "scikit-learn's silhouette score of the test posterior means, grouped by class, on a "
           "seeded subset of {silhouette_images:,}.", classes=True),
)

# The numbers of the page's other tables: (name, meaning as in Metric, needs the classifier)
OTHER_NUMBERS = (
    ("baselines", "computed once per dataset by the split stage (`reports/baselines.json`) on "
     "the same test images: every image its own PNG file, headers included; one xz stream of "
     "all the test images' raw bytes; an independent 256-way categorical per pixel position "
     "fit on the training split with add-one smoothing.", False),
    ("BCE floor", "the lowest reconstruction term a Bernoulli decoder can score: the summed "
     "binary entropy of the pixel intensities v/255, averaged over images.", False),
    ("frozen latents", "{samples:,} images per sigma from one seeded eps draw (shared by the "
     "three sigmas); the N(0, I) column is the prior set of the FID row, an independent draw, "
     "so sigma 1 beside it shows pure sampling noise. Diversity is averaged over all pairs of "
     "the first {diversity_images:,} images of each set.", False),
    ("real vs real", "validation images (held out of the official training set; neither the "
     "VAEs nor the classifier saw them) against the test set, as many as a generated set, so "
     "the floor has the same small-sample bias as the models' FIDs.", True),
)


def rate_table(results: dict, baselines: dict, likelihoods: dict) -> list[str]:
    """The 8-bit rate of every model and checkpoint, the baselines below them, and which
    baselines each beats; ``likelihoods`` maps each model to its likelihood, whose label says
    how its rate is scored. A model without a rate (binarized data) is left out with a line."""
    out = ["| model | checkpoint | likelihood | bits/dim, ELBO | bits/dim, IWAE | verdict |",
           "|---|---|---|---:|---:|---|"]
    binarized = []
    for kind, by_ckpt in results.items():
        for ckpt, m in by_ckpt.items():
            if "bpd_8bit" not in m:
                binarized.append(model_title(kind))
                break
            out.append(f"| {model_title(kind)} | `{ckpt}` | "
                       f"{likelihoods[kind].label} | {with_error(m, 'bpd_8bit', '.3f')}"
                       f" | {with_error(m, 'bpd_8bit_iwae', '.3f')} | "
                       f"{verdict(min(m['bpd_8bit'], m['bpd_8bit_iwae']), baselines)} |")
    for key, label in BASELINE_LABELS.items():
        out.append(f"| {label} | | | {with_error(baselines[key], 'bpd', '.3f')} | | |")
    out.append("")
    if binarized:
        out += [f"{' and '.join(binarized)}: trained on binarized pixels (`data.binarize: "
                f"dynamic`), so no rate of the 8-bit images; its NLL in nats of binarized test "
                f"images is the IWAE bound below.", ""]
    return out


def with_error(metrics: dict, key: str, fmt: str) -> str:
    """``metrics[key]`` in ``fmt``, with ``± <key>_se`` where the metrics have one; '–' where
    there is no such metric."""
    if key not in metrics:
        return "–"
    value = format(metrics[key], fmt)
    se = metrics.get(f"{key}_se")
    return value if se is None else f"{value} ± {se:{fmt}}"


def chance_warning(classifier: dict) -> str:
    """A sentence when the feature classifier is barely better than guessing (below 1.5x the
    chance accuracy): then its features tell images apart poorly, and FID says little."""
    classes = classifier.get("num_classes", 10)
    if classifier["test_accuracy"] >= 1.5 / classes:
        return ""
    return (f" That is near chance ({100 / classes:.1f} % for {classes} classes): its "
            f"features barely tell these images apart, so FID and precision/recall measure "
            f"little here; train it longer (`classifier.epochs`).")


def rate_section(results: dict, baselines: dict, likelihoods: dict, dataset: str) -> list[str]:
    """The 8-bit rates of every checkpoint beside the codecs' and the histogram's."""
    return [f"### Bits per dimension of the {markdown_text(dataset)} test images", "",
            f"-log2 P(x) of the {baselines['test_images']:,} 8-bit test images per pixel value: "
            f"what a lossless code built from the model would need (Theis et al. 2016). Lower "
            f"is better; ± is one standard error over the test images.", "",
            *rate_table(results, baselines, likelihoods)]


def evaluation_intro(reference: dict, cfg: EvaluateConfig, seed: int, dataset: str,
                     skipped: str | None) -> list[str]:
    """What the per-model tables' numbers are in, what their ± is, and why a number is missing."""
    out = [f"### Evaluation on the {markdown_text(dataset)} test set", "",
           f"{reference['test_images']:,} test images, seed {seed}. Nats per image "
           f"(summed over pixels or latent dimensions, averaged over images); KL weight 1 "
           f"whatever beta trained the model. Lower is better for nats, bits/dim and FID; "
           f"higher for precision, recall, probe accuracy and silhouette. ± is one standard "
           f"error: how far this test set may put a model's score from its value on the whole "
           f"distribution, over the test images used, and for FID, precision and recall over "
           f"{cfg.prior_draws} fresh prior draws. It leaves out training noise (another seed), "
           f"and since every run scores the same test images it is not the noise of a "
           f"difference between runs: `make compare` measures that over seeds.", ""]
    if skipped:
        out += [f"**One class.** {skipped[0].upper()}{skipped[1:]}.", ""]
    return out


def model_tables(results: dict, latent_dims: dict) -> list[str]:
    """One table per model: a row per :data:`METRIC_ROWS` entry any of its checkpoints has, a
    column per checkpoint."""
    out = []
    for kind, by_ckpt in results.items():
        ckpts = list(by_ckpt)
        out += [f"### {model_title(kind)} (`models/{kind}`, z = {latent_dims[kind]})", "",
                "| metric | " + " | ".join(f"`{c}`" for c in ckpts) + " |",
                "|---|" + "---:|" * len(ckpts)]
        for m in METRIC_ROWS:
            if any(m.key in by_ckpt[c] for c in ckpts):
                out.append(f"| {m.label} | " + " | ".join(with_error(by_ckpt[c], m.key, m.fmt)
                                                          for c in ckpts) + " |")
        out.append("")
    return out


def frozen_table(results: dict, skipped: str | None) -> list[str]:
    """Recipe 002's frozen latents: diversity (and FID) per sigma beside the prior's baseline."""
    sigmas = [frozen_key(s) for s in FROZEN_SIGMAS]
    measured = "diversity (mean pairwise L2 distance, pixels in [0, 1])" + \
        ("" if skipped else " / FID")
    out = ["### Frozen latents (recipe 002, section 9)", "",
           f"Images decoded from z = sigma * eps (mu frozen at 0) beside the prior's baseline: "
           f"{measured}.", "",
           "| model | checkpoint | prior p(z) | "
           + " | ".join(f"sigma {s:g}" for s in FROZEN_SIGMAS) + " |", "|---|---|---:|" + "---:|" * len(sigmas)]
    for kind, by_ckpt in results.items():
        for ckpt, m in by_ckpt.items():
            pairs = [("frozen_diversity_prior", "fid")]
            pairs += [(f"frozen_diversity_{s}", f"frozen_fid_{s}") for s in sigmas]
            cells = [f"{m[d]:.2f}" + ("" if skipped else f" / {m[f]:.2f}") for d, f in pairs]
            out.append(f"| {kind} | `{ckpt}` | " + " | ".join(cells) + " |")
    return out + [""]


def reference_points(reference: dict, classifier: dict, skipped: str | None) -> list[str]:
    """The floors the models' numbers are read against, and the feature classifier."""
    r = reference
    out = ["### Reference points", "",
           "| measure | value |", "|---|---:|",
           f"| BCE floor, test set (nats) | {r['bce_floor_test']:.2f} |",
           f"| BCE floor, validation split (nats) | {r['bce_floor_val']:.2f} |"]
    if skipped:
        return out + ["", "No feature classifier and no real-vs-real FID: the data has one "
                      "class.", ""]
    return out + [
        f"| FID, real vs real ({r['real_images']:,} validation vs test images) | "
        f"{r['fid_real']:.2f} |",
        f"| precision / recall, real vs real | {r['precision_real']:.3f} / "
        f"{r['recall_real']:.3f} |",
        f"| feature classifier, test accuracy | {classifier['test_accuracy']:.4f} |", "",
        f"The feature classifier (`models/classifier.pt`) is a CNN with channels "
        f"{classifier['channels']} and a {classifier['features']}-unit penultimate "
        f"layer, trained for {classifier['epochs']} epochs on the training split; its "
        f"test accuracy is {100 * classifier['test_accuracy']:.2f} %."
        + chance_warning(classifier), ""]


def run_sizes(reference: dict, cfg: EvaluateConfig) -> dict[str, float]:
    """The sample sizes and the threshold that fill the ``{fields}`` of the meanings."""
    return {"k": reference["iwae_samples"], "iwae_images": reference["iwae_images"],
            "samples": reference["samples"], "test_images": reference["test_images"],
            "iwae_batch": cfg.iwae_batch, "pr_neighbours": cfg.pr_neighbours,
            "probe_images": cfg.probe_images, "silhouette_images": cfg.silhouette_images,
            "diversity_images": min(cfg.diversity_images, reference["samples"]),
            "active_threshold": ACTIVE_THRESHOLD}


def how_computed(reference: dict, cfg: EvaluateConfig, skipped: str | None) -> list[str]:
    """One line per number of the page, from :data:`METRIC_ROWS` and :data:`OTHER_NUMBERS`, leaving
    out those of the feature classifier where the data has one class."""
    sizes = run_sizes(reference, cfg)
    lines = []
    for m in METRIC_ROWS:
        if not (skipped and m.classes):
            label = m.label.replace("\\|", "|")  # not in a table cell here
            lines.append(f"- **{label}** (`{m.key}`): {m.meaning.format(**sizes)}")
    lines += [f"- **{name}**: {meaning.format(**sizes)}"
              for name, meaning, classes in OTHER_NUMBERS if not (skipped and classes)]
    return ["### How each number is computed", "", *lines, ""]


def summary_markdown(results: dict, reference: dict, classifier: dict, cfg: EvaluateConfig,
                     seed: int, dataset: str, latent_dims: dict, baselines: dict,
                     likelihoods: dict) -> str:
    """``reports/evaluation.md``: the 8-bit rates beside the baselines, one table per model,
    the frozen-latent table, the reference points and how each number was computed."""
    skipped = classifier.get("skipped")
    return "\n".join([
        *rate_section(results, baselines, likelihoods, dataset),
        *evaluation_intro(reference, cfg, seed, dataset, skipped),
        *model_tables(results, latent_dims),
        *frozen_table(results, skipped),
        *reference_points(reference, classifier, skipped),
        *how_computed(reference, cfg, skipped)])
