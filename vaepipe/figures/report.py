"""The report a person opens first: ``report.md`` (figures by relative link) and ``report.html``
(the same page as one self-contained file, every image inlined as a data: URI).

The markdown is the source; the HTML is rendered from it with markdown-it-py, so the two never
say different things. Tables and text written by other stages (``reports/evaluation.md``,
``reports/sweep.md``) are embedded verbatim.
"""
from __future__ import annotations

import base64
import html
import mimetypes
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from vaepipe.config import Params, flatten, to_dict
from vaepipe.data.baselines import SHORT_NAMES, verdict
from vaepipe.data.names import markdown_text
from vaepipe.models.vae import MODELS, model_title


@dataclass(frozen=True)
class FigureEntry:
    """One drawn figure: its file, the report section it belongs to and one line about it."""

    path: Path
    group: str
    title: str
    caption: str
    headline: bool = False  # shown at the top of the report, before the tables


@dataclass(frozen=True)
class RunInfo:
    """What was run, for the report's first table."""

    revision: str                                                   # the commit it started from
    dataset: str
    data_note: str = ""
    devices: Mapping[str, str] = field(default_factory=dict)        # model title -> device
    checkpoints: Mapping[str, str] = field(default_factory=dict)    # model title -> text
    changed_params: Sequence[tuple[str, Any, Any]] = ()             # (key, value, default)
    changed_files: Sequence[str] | None = ()  # uncommitted inputs besides params.yaml; None: no git


def changed_params(params: Params) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value, default)`` for every param that differs from its default."""
    given, default = flatten(to_dict(params)), flatten(to_dict(Params()))
    return [(key, given[key], default[key]) for key in given if given[key] != default[key]]


def pipeline_files(lock: str | Path = "dvc.lock") -> tuple[set[str], set[str]]:
    """``(inputs, outputs)`` of the pipeline as ``dvc.lock`` lists them: every stage's deps
    (with dvc.yaml) and every path a stage writes (with the lock itself)."""
    try:
        stages = (yaml.safe_load(Path(lock).read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        stages = {}
    outputs = {str(lock), *(o["path"] for st in stages.values() for o in st.get("outs", []))}
    inputs = {"dvc.yaml", *(d["path"] for st in stages.values() for d in st.get("deps", []))}
    return inputs - outputs, outputs


def git_revision(cwd: str | Path = ".", inputs: Iterable[str] | None = None
                 ) -> tuple[str, list[str] | None]:
    """``(the checked-out commit as a short hash, or 'unknown ...' without git; the tracked
    inputs changed since it)``. ``inputs`` are the files the run reads (None: every tracked
    file); params.yaml never counts (its changes are listed as params), so a fresh
    ``dvc repro`` of a clean clone, which rewrites its metrics, figures and ``dvc.lock``,
    reports no change."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              check=True, timeout=30).stdout
    try:
        rev = git("rev-parse", "--short=12", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no", "--no-renames")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git commit here)", None
    changed = {line[3:] for line in status.splitlines() if line[3:]} - {"params.yaml"}
    return f"`{rev}`", sorted(changed if inputs is None else changed & set(inputs))


def _fmt(value: Any) -> str:
    return f"`{value!r}`" if isinstance(value, str) or value is None else f"`{value}`"


def _relative(path: Path, report_dir: Path) -> str:
    return Path(os.path.relpath(path, report_dir)).as_posix()


# The headline numbers of the report's first table: (evaluate.json key, header, format). What
# each one is: METRIC_ROWS in vaepipe/evaluate/summary.py, rendered in evaluation.md.
HEADLINE = (("bpd_8bit", "bits/dim, 8-bit", ".3f"), ("nelbo", "test NELBO (nats)", ".2f"),
            ("iwae_nll", "IWAE bound (nats)", ".2f"), ("bpd", "bits/dim (recipe 000)", ".4f"),
            ("fid", "FID", ".1f"), ("precision", "precision", ".3f"), ("recall", "recall", ".3f"),
            ("active_units", "active units", "d"), ("probe_accuracy", "probe accuracy", ".3f"))
HEADLINE_CHECKPOINTS = ("epoch_01", "best")


def _cell(value: Any, fmt: str, se: Any = None) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return format(value, fmt) + (f" ± {se:{fmt}}" if isinstance(se, (int, float)) else "")


def noise_line(noise: Mapping[str, Any]) -> str:
    """The seeds' spread (``reports/noise.json``, from ``make compare``) as one sentence: how
    far apart two single runs land from seed noise alone."""
    labels = {key: header.split(" (")[0] for key, header, _ in HEADLINE}
    parts = []
    for metric, spread in noise["metrics"].items():
        kind, _, key = metric.split(".", 2) if metric.count(".") >= 2 else (metric, "", "")
        label = f"{model_title(kind)} {labels.get(key, key)}" if kind in MODELS else metric
        parts.append(f"{label} {spread['single_run_difference']:.3g}")
    seeds = ", ".join(str(s) for s in noise["seeds"])
    changed = noise.get("differs_from_defaults") or {}
    where = ("the default params" if not changed else
             "params " + ", ".join(f"`{k}` = {v}" for k, v in changed.items()))
    return (f"**Seed noise.** Over {len(noise['seeds'])} seeds ({seeds}) of {where} "
            f"(`make compare`, `reports/noise.json`), two single runs differ by up to "
            f"{'; '.join(parts)} from the seed alone (95 %): smaller differences are noise. "
            f"The ± in the table is a test-set standard error, not this noise (Evaluation, "
            f"below, says what it is).")


def noise_applies(noise: Mapping[str, Any], changed: Sequence[tuple[str, Any, Any]]) -> bool:
    """Whether the seeds' spread was measured on this run's data (the same ``data.*`` params,
    but where the files came from): another dataset's noise says nothing about this one."""
    def data(items) -> dict:
        return {k: v for k, v in items if k.startswith("data.") and k != "data.mirror"}
    return data((noise.get("differs_from_defaults") or {}).items()) == \
        data((key, value) for key, value, _ in changed)


def baselines_line(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                   baselines: Mapping[str, Any]) -> str:
    """The codecs' and the histogram's rates of the same test images (``reports/baselines.json``)
    and which of them each model's best checkpoint beats."""
    rates = ", ".join(f"{SHORT_NAMES[k]} {baselines[k]['bpd']:.3f}" for k in SHORT_NAMES)
    verdicts = [f"{model_title(kind)} {verdict(by_ckpt['best']['bpd_8bit'], baselines)}"
                .replace("beats none", "beats none of them")
                for kind, by_ckpt in results.items() if "bpd_8bit" in by_ckpt.get("best", {})]
    return (f"**Against codecs.** The same test images cost {rates} bits/dim (PNG per image, "
            f"xz over the whole set, a per-pixel histogram of the training split). At its best "
            f"checkpoint, " + ("; ".join(verdicts) if verdicts else
                               "no model has an 8-bit rate (binarized data)") + ".")


def results_table(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[str]:
    """One row per model and checkpoint (epoch 1, best) of ``reports/evaluate.json``."""
    lines = ["| model | checkpoint | " + " | ".join(h for _, h, _ in HEADLINE) + " |",
             "|---|---|" + "---:|" * len(HEADLINE)]
    for kind, by_ckpt in results.items():
        for ckpt in HEADLINE_CHECKPOINTS:
            if ckpt in by_ckpt:
                m = by_ckpt[ckpt]
                lines.append(f"| {model_title(kind)} | `{ckpt}` | "
                             + " | ".join(_cell(m.get(k), f, m.get(f"{k}_se"))
                                          for k, _, f in HEADLINE) + " |")
    return lines


def _changes(info: RunInfo) -> str:
    if info.changed_files is None:
        return "unknown (no git here)"
    return ", ".join(f"`{p}`" for p in info.changed_files) if info.changed_files else "none"


def made_from(info: RunInfo) -> str:
    """One line naming the run by what it was made from: the commit, any uncommitted change to
    the pipeline's inputs, and the params that differ from the defaults."""
    if info.changed_files:
        commit = f"commit {info.revision} with uncommitted changes to {_changes(info)}"
    elif info.changed_files is None:
        commit = f"commit {info.revision}"
    else:
        commit = f"commit {info.revision} (no uncommitted change to the pipeline's inputs)"
    if info.changed_params:
        params = ", ".join(f"`{k}` = {_fmt(v)}" for k, v, _ in info.changed_params)
        n = len(info.changed_params)
        params = f"{n} param{'s' if n > 1 else ''} differing from the defaults: {params}"
    else:
        params = "the default params (the recipes)"
    return f"**Made from** {commit}, with {params}."


def _what_was_run(info: RunInfo) -> list[str]:
    lines = ["## What was run", "", "| what | value |", "|---|---|",
             f"| started from commit | {info.revision} |",
             f"| uncommitted changes to the pipeline's inputs | {_changes(info)} |",
             f"| dataset | {markdown_text(info.dataset)}"
             f"{': ' + info.data_note if info.data_note else ''} |"]
    lines += [f"| device, {model} | {device} |" for model, device in info.devices.items()]
    lines += [f"| checkpoints drawn, {model} | {text} |"
              for model, text in info.checkpoints.items()]
    if not info.changed_params:
        lines.append("| params differing from the defaults | none: the recipes "
                     "(`vaepipe/config.py`) |")
        return lines
    lines += [f"| params differing from the defaults | {len(info.changed_params)}, listed "
              "below |", "", "| param | value | default |", "|---|---|---|"]
    lines += [f"| `{k}` | {_fmt(v)} | {_fmt(d)} |" for k, v, d in info.changed_params]
    return lines


def _figure_lines(entry: FigureEntry, report_dir: Path) -> list[str]:
    return ["", f"**{entry.title}.** {entry.caption}", "",
            f"![{entry.title}]({_relative(entry.path, report_dir)})"]


def build_markdown(info: RunInfo, figure_entries: Sequence[FigureEntry], report_dir: str | Path,
                   evaluation_md: str | None = None, sweep_md: str | None = None,
                   sweep_gifs: Mapping[str, Path] | None = None,
                   results: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
                   noise: Mapping[str, Any] | None = None,
                   baselines: Mapping[str, Any] | None = None) -> str:
    """The report as markdown; figures and GIFs are linked relative to ``report_dir``.

    First one line on what the run was made from, then what a reader wants to see: the
    ``headline`` figures (samples and reconstructions, epoch 1 beside best) and one table of
    ``results`` (``evaluate.json``'s numbers); then what was run, the long tables
    (``evaluation_md`` / ``sweep_md``, embedded verbatim; None says they were not built) and
    every other figure. ``sweep_gifs`` maps a beta (as text) to its latent-evolution GIF;
    ``noise`` (``reports/noise.json``) is the seeds' spread stated under the table, and
    ``baselines`` (``reports/baselines.json``) the codecs' rates beside the models'.
    """
    report_dir = Path(report_dir)
    lines = [f"# VAE report: {markdown_text(info.dataset)}", "", made_from(info), "",
             "What the models draw and how well they score come first, then what was run, every "
             "table and every figure of the recipes, the first epoch beside the best one. Written "
             "by the `visualize` stage of `dvc repro` from the saved outputs of training, "
             "`evaluate` and the beta sweep; `report.html` is the same page in one file that "
             "opens offline.", "", "## At a glance", "",
             "Each model after its first epoch and at its best validation loss, on the test set "
             "(what each number means and how it is computed: *How each number is computed* "
             "under Evaluation, below)."]
    for entry in (e for e in figure_entries if e.headline):
        lines += _figure_lines(entry, report_dir)
    if results:
        lines += [""] + results_table(results)
        if not any("fid" in by_ckpt.get("best", {}) for by_ckpt in results.values()):
            lines += ["", "No FID, precision, recall or probe accuracy (–): the data has one "
                      "class, so there is no classifier and no class to compare (Evaluation, "
                      "below)."]
    if results and baselines:
        lines += ["", baselines_line(results, baselines)]
    if noise and noise.get("metrics") and noise_applies(noise, info.changed_params):
        lines += ["", noise_line(noise)]
    lines += [""] + _what_was_run(info)

    lines += ["", "## Evaluation", ""]
    lines.append(evaluation_md.strip() if evaluation_md is not None else
                 "_Not available: `reports/evaluation.md` was not found (`dvc repro evaluate` "
                 "writes it)._")

    lines += ["", "## Beta sweep", ""]
    lines.append(sweep_md.strip() if sweep_md is not None else
                 "_Not available: `reports/sweep.md` was not found (`dvc repro` runs the "
                 "beta sweep)._")
    if sweep_gifs:
        lines += ["", "Latent means of test images through training, one GIF per beta "
                  "(recipe 002's latent-evolution animation):", ""]
        lines += ["| " + " | ".join(f"beta {b}" for b in sweep_gifs) + " |",
                  "|" + "---|" * len(sweep_gifs),
                  "| " + " | ".join(f"![latent evolution, beta {b}]({_relative(p, report_dir)})"
                                    for b, p in sweep_gifs.items()) + " |"]

    lines += ["", "## Figures", "",
              "Every other figure the `visualize` stage drew, with one line on what it shows. "
              "Where two panels or rows are labelled *epoch 1* and *best*, they are the same "
              "model after its first epoch and at its best validation loss."]
    group = None
    for entry in (e for e in figure_entries if not e.headline):
        if entry.group != group:
            group = entry.group
            lines += ["", f"### {group}"]
        lines += _figure_lines(entry, report_dir)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# HTML

_STYLE = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif;
       max-width: 1500px; margin: 1.5em auto; padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #e4e4e4; padding-bottom: .15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #d0d0d0; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; }
code { background: #f5f5f5; padding: 0 .2em; }
"""


def data_uri(path: str | Path) -> str:
    """The file as a ``data:`` URI (base64), its MIME type from the file name."""
    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def markdown_to_html(markdown: str, base_dir: str | Path, title: str) -> str:
    """Render ``markdown`` as one self-contained HTML page.

    Every image with a relative path inside ``base_dir`` is read from there and inlined; a
    missing file is an error (the page would show a broken image), and so is a link that leads
    out of ``base_dir`` (``../``, an absolute path or a symlink out): the page never reads or
    embeds a file the report does not own. Raw HTML in the markdown is escaped.
    """
    from markdown_it import MarkdownIt

    md = MarkdownIt("js-default")  # CommonMark + tables, raw HTML off
    base = Path(base_dir).resolve()
    tokens = md.parse(markdown)
    for token in tokens:
        for child in token.children or ():
            if child.type == "image":
                src = str(child.attrGet("src") or "")
                if ":" not in src.split("/", 1)[0]:  # a relative path, not data:/http:
                    target = (base / src).resolve()
                    if not target.is_relative_to(base):
                        raise ValueError(f"report image {src!r} points outside {base}; "
                                         f"only the report's own files are inlined")
                    child.attrSet("src", data_uri(target))
    body = md.renderer.render(tokens, md.options, {})
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f"<body>\n{body}</body>\n</html>\n")


def figure_links(markdown: str) -> list[str]:
    """The targets of every markdown image in ``markdown``, in order."""
    from markdown_it import MarkdownIt

    found = []
    for token in MarkdownIt("js-default").parse(markdown):
        for child in token.children or ():
            if child.type == "image":
                found.append(str(child.attrGet("src")))
    return found
