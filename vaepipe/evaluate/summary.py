"""``reports/evaluation.md``: the evaluation's numbers as tables, and how each was computed.

Headings are ``###`` so the report can embed the page as it is.
"""
from __future__ import annotations

from vaepipe.config import EvaluateConfig
from vaepipe.data.baselines import BASELINE_LABELS, verdict
from vaepipe.data.names import markdown_text
from vaepipe.evaluate.evaluation import FROZEN_SIGMAS, frozen_key
from vaepipe.models.vae import model_title

_ROWS = [  # (metric, label, format)
    ("bpd_8bit", "8-bit rate, ELBO (bits/dim)", ".3f"),
    ("bpd_8bit_iwae", "8-bit rate, IWAE (bits/dim)", ".3f"),
    # a bare "|" would split a table cell: escaped, as GitHub-flavoured markdown reads it
    ("recon", r"reconstruction -log p(x \| z) (nats)", ".2f"),
    ("kl", r"KL(q(z \| x) ‖ p(z)) (nats)", ".2f"),
    ("nelbo", "NELBO (nats)", ".2f"),
    ("bpd", "seed 000's bits/dim: NELBO / (D ln 2), not a rate", ".4f"),
    ("nelbo_above_floor", "NELBO above the BCE floor (nats)", ".2f"),
    ("iwae_nll", "IWAE bound on -log p(x) (nats)", ".2f"),
    ("iwae_gain", "IWAE gain over the ELBO (nats)", ".2f"),
    ("active_units", "active units", "d"),
    ("fid", "FID, prior samples", ".2f"),
    ("precision", "precision (k-NN)", ".3f"),
    ("recall", "recall (k-NN)", ".3f"),
    ("fid_recon", "FID, reconstructions", ".2f"),
    ("probe_accuracy", "linear probe accuracy", ".3f"),
    ("silhouette", "silhouette of latent means by class", ".3f"),
]


# What the 8-bit rate of each likelihood is (the table's likelihood column)
RATE_SCORED_AS = {
    "bernoulli": "Bernoulli, scored as a continuous Bernoulli",
    "continuous_bernoulli": "continuous Bernoulli",
    "gaussian": "Gaussian (with obs_std 1 at least 9.33 bits/dim by construction)",
    "discretized_logistic": "discretized logistic",
}


def rate_table(results: dict, baselines: dict, likelihoods: dict) -> list[str]:
    """The 8-bit rate of every model and checkpoint, the baselines below them, and which
    baselines each beats; a model without a rate (binarized data) is left out with a line."""
    out = ["| model | checkpoint | likelihood | bits/dim, ELBO | bits/dim, IWAE | verdict |",
           "|---|---|---|---:|---:|---|"]
    binarized = []
    for kind, by_ckpt in results.items():
        for ckpt, m in by_ckpt.items():
            if "bpd_8bit" not in m:
                binarized.append(model_title(kind))
                break
            out.append(f"| {model_title(kind)} | `{ckpt}` | "
                       f"{RATE_SCORED_AS[likelihoods[kind]]} | {with_error(m, 'bpd_8bit', '.3f')}"
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


def summary_markdown(results: dict, reference: dict, classifier: dict, cfg: EvaluateConfig,
                     seed: int, dataset: str, latent_dims: dict, baselines: dict,
                     likelihoods: dict) -> str:
    """``reports/evaluation.md``: the 8-bit rates beside the baselines, one table per model,
    the frozen-latent table, the classifier, and how each number was computed. Headings are
    ``###`` so the report can embed it."""
    out = [f"### Bits per dimension of the {markdown_text(dataset)} test images", "",
           f"-log2 P(x) of the {baselines['test_images']:,} 8-bit test images per pixel value: "
           f"what a lossless code built from the model would need (Theis et al. 2016). Lower "
           f"is better; ± is one standard error over the test images.", "",
           *rate_table(results, baselines, likelihoods),
           f"### Evaluation on the {markdown_text(dataset)} test set", "",
           f"{reference['test_images']:,} test images, seed {seed}. Nats per image "
           f"(summed over pixels or latent dimensions, averaged over images); KL weight 1 "
           f"whatever beta trained the model. Lower is better for nats, bits/dim and FID; "
           f"higher for precision, recall, probe accuracy and silhouette. ± is one standard "
           f"error: over the test images used, and for FID, precision and recall over "
           f"{cfg.prior_draws} fresh prior draws. It says how precisely this test set "
           f"measures this model; it leaves out training noise (another seed), and since "
           f"every run scores the same test images it is not the noise of a difference "
           f"between runs: `make compare` measures that over seeds.", ""]
    skipped = classifier.get("skipped")
    if skipped:
        out += [f"**One class.** {skipped[0].upper()}{skipped[1:]}.", ""]
    for kind, by_ckpt in results.items():
        ckpts = list(by_ckpt)
        out += [f"### {model_title(kind)} (`models/{kind}`, z = {latent_dims[kind]})", "",
                "| metric | " + " | ".join(f"`{c}`" for c in ckpts) + " |",
                "|---|" + "---:|" * len(ckpts)]
        for key, label, fmt in _ROWS:
            if any(key in by_ckpt[c] for c in ckpts):
                out.append(f"| {label} | " + " | ".join(with_error(by_ckpt[c], key, fmt)
                                                        for c in ckpts) + " |")
        out.append("")

    sigmas = [frozen_key(s) for s in FROZEN_SIGMAS]
    measured = "diversity (mean pairwise L2 distance, pixels in [0, 1])" + \
        ("" if skipped else " / FID")
    out += ["### Frozen latents (seed 002, section 9)", "",
            f"Images decoded from z = sigma * eps (mu frozen at 0) beside the N(0, I) baseline: "
            f"{measured}.", "",
            "| model | checkpoint | N(0, I) | " + " | ".join(f"sigma {s:g}" for s in FROZEN_SIGMAS)
            + " |", "|---|---|---:|" + "---:|" * len(sigmas)]
    for kind, by_ckpt in results.items():
        for ckpt, m in by_ckpt.items():
            pairs = [("frozen_diversity_prior", "fid")]
            pairs += [(f"frozen_diversity_{s}", f"frozen_fid_{s}") for s in sigmas]
            cells = [f"{m[d]:.2f}" + ("" if skipped else f" / {m[f]:.2f}") for d, f in pairs]
            out.append(f"| {kind} | `{ckpt}` | " + " | ".join(cells) + " |")
    out.append("")

    r = reference
    out += ["### Reference points", "",
            "| measure | value |", "|---|---:|",
            f"| BCE floor, test set (nats) | {r['bce_floor_test']:.2f} |",
            f"| BCE floor, validation split (nats) | {r['bce_floor_val']:.2f} |"]
    if skipped:
        out += ["", "No feature classifier and no real-vs-real FID: the data has one class.",
                ""]
    else:
        out += [f"| FID, real vs real ({r['real_images']:,} validation vs test images) | "
                f"{r['fid_real']:.2f} |",
                f"| precision / recall, real vs real | {r['precision_real']:.3f} / "
                f"{r['recall_real']:.3f} |",
                f"| feature classifier, test accuracy | {classifier['test_accuracy']:.4f} |", "",
                f"The feature classifier (`models/classifier.pt`) is a CNN with channels "
                f"{classifier['channels']} and a {classifier['features']}-unit penultimate "
                f"layer, trained for {classifier['epochs']} epochs on the training split; its "
                f"test accuracy is {100 * classifier['test_accuracy']:.2f} %."
                + chance_warning(classifier), ""]

    k = r["iwae_samples"]
    how = ["### How each number is computed", "",
            "- **8-bit rate**: for test images x in {0..255}^D, uniform dequantization y = "
            "(x + u) / 256 gives -log P(x) <= E_u[-log p(y)] + D ln 256 (Theis et al. 2016), "
            "and -log p(y) is bounded by the NELBO (ELBO column) or by the IWAE bound (IWAE "
            "column: the whole-set value minus the importance-weighting gain on the subset "
            "below). A Bernoulli-logit decoder is scored with the continuous Bernoulli of the "
            "same lambda = sigmoid(logits) (Loaiza-Ganem & Cunningham 2019), the density "
            "its cross-entropy lacks the normaliser of; a Gaussian with its own density; the "
            "discretized logistic gives P(x) itself, with no dequantization. In bits per "
            "pixel value.",
            "- **baselines**: computed once per dataset by the split stage "
            "(`reports/baselines.json`) on the same test images: every image its own PNG file, "
            "headers included; one xz stream of all the test images' raw bytes; an "
            "independent 256-way categorical per pixel position fit on the training split "
            "with add-one smoothing.",
            "- **reconstruction, KL, NELBO**: `vaepipe.train.loop.elbo_per_image` on the whole test "
            "set, one posterior sample per image (seeded), the model's own likelihood summed "
            "over pixels (a continuous Bernoulli model scores dequantized pixels, as it trained; "
            "a binarized model one fixed binarization), closed-form Gaussian KL; NELBO = "
            "reconstruction + KL.",
            "- **seed 000's bits/dim**: NELBO / (pixels × ln 2), as seed 000 defines it. With the "
            "Bernoulli likelihood on grey levels this is no rate of the data (the cross-entropy "
            "is not a density over 8-bit values); the 8-bit rate above is.",
            "- **BCE floor** (Bernoulli models): the summed binary entropy of the pixel "
            "intensities v/255, averaged over images: no Bernoulli decoder can score a lower "
            "reconstruction term. NELBO above the floor = NELBO − the test set's floor.",
            f"- **IWAE gain**: the importance-weighted bound (Burda et al. 2015) with K = {k} "
            f"samples from q(z|x) (log-sum-exp in float64; the decoder runs on "
            f"{cfg.iwae_batch} × K latents at a time), subtracted from the Monte-Carlo NELBO "
            f"of the same latents, averaged over a seeded subset of {r['iwae_images']:,} test "
            f"images. **IWAE bound** = test-set NELBO − gain: an estimate of the bound's "
            f"test-set mean whose error is the gain's, not the subset's spread of -log p(x); its "
            f"standard error combines the NELBO's and the gain's as independent. When the "
            f"subset is the whole test set (`-S evaluate.iwae_images=10000`, the literature's "
            f"protocol with `evaluate.iwae_samples=5000`), the bound is the IWAE mean itself.",
            "- **active units**: latent dimensions whose posterior mean varies across test "
            "images by more than 0.01 (Cov_x E_q[z_u] > 0.01, Burda et al.); the KL of each "
            "dimension is in `reports/evaluate_details.json`.",
            f"- **FID**: Fréchet distance between Gaussians fitted to the classifier's "
            f"penultimate features of {r['samples']:,} prior samples z ~ N(0, I) decoded to "
            f"the likelihood's mean image (sigmoid(logits) for the Bernoulli), and of all "
            f"{r['test_images']:,} test images "
            f"(`scipy.linalg.sqrtm`, tiny imaginary parts dropped). Not comparable with "
            f"Inception FIDs from papers.",
            f"- **precision / recall**: Kynkäänniemi et al. 2019 with k = {cfg.pr_neighbours}, "
            f"in the same feature space, {r['samples']:,} prior samples against a seeded subset "
            f"of as many test images.",
            f"- **FID, reconstructions**: the mean images of decode(mu) of the same "
            f"{r['samples']:,} seeded test images against all test images, as for the samples.",
            f"- **linear probe**: logistic regression (standardised inputs) on the posterior "
            f"means of {cfg.probe_images:,} seeded training images, scored on the test set.",
            f"- **silhouette**: scikit-learn's silhouette score of the test posterior means, "
            f"grouped by class, on a seeded subset of {cfg.silhouette_images:,}.",
            f"- **frozen latents**: {r['samples']:,} images per sigma from one seeded eps draw "
            f"(shared by the three sigmas); the N(0, I) column is the prior set of the FID "
            f"row, an independent draw, so sigma 1 beside it shows pure sampling noise. "
            f"Diversity is averaged over all pairs of the first "
            f"{min(cfg.diversity_images, r['samples']):,} images of each set.",
            "- **real vs real**: validation images (held out of the official training set; "
            "neither the VAEs nor the classifier saw them) against the test set, as many as a "
            "generated set, so the floor has the same small-sample bias as the models' FIDs.",
            ""]
    class_dependent = ("- **FID", "- **precision", "- **linear probe", "- **silhouette",
                       "- **real vs real")
    out += [line for line in how if not (skipped and line.startswith(class_dependent))]
    return "\n".join(out)
