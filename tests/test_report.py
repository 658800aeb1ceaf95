"""The visualize stage and its report: every figure listed, nothing missing, offline HTML, DVC."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import vizdata
from vaepipe.config import parse_params
from vaepipe.figures.gallery import InputError, load_evaluation
from vaepipe.figures.report import (FigureEntry, RunInfo, build_markdown, changed_params,
                                    figure_links, git_revision, markdown_to_html,
                                    pipeline_files)

REPO = Path(__file__).resolve().parent.parent
PER_MODEL = ["reconstructions", "samples_4x4", "samples_8x8", "latent_pca", "latent_tsne",
             "interpolation", "traversal", "kl_per_dim", "posterior", "frozen_latents",
             "loss_curves"]
EXPECTED_FIGURES = sorted(
    ["training_images.png", "val_nelbo.png", "mlp_samples_10x10.png"]
    + [f"{m}_{name}.png" for m in ("mlp", "conv") for name in PER_MODEL])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A project root where the visualize stage ran once on tiny inputs (shared by the tests)."""
    return vizdata.built_once(tmp_path_factory)


def test_stage_draws_every_figure_for_both_models(built):
    written = sorted(p.name for p in (built / "reports/figures").iterdir())
    assert written == EXPECTED_FIGURES
    for name in written:
        with Image.open(built / "reports/figures" / name) as img:
            assert img.width > 300 and img.height > 150


def test_report_lists_every_figure_that_exists_and_no_missing_one(built):
    report = built / "reports/report.md"
    links = figure_links(report.read_text())
    figure_links_ = sorted(Path(link).name for link in links if link.startswith("figures/"))
    assert figure_links_ == EXPECTED_FIGURES            # every figure, each once
    missing = [link for link in links if not (report.parent / link).is_file()]
    assert missing == []                                # no link to a file that is not there
    gifs = [link for link in links if link.endswith(".gif")]
    assert gifs == ["sweep/beta_0.1/latent.gif", "sweep/beta_0.5/latent.gif"]


def test_report_says_what_was_run_and_embeds_the_tables_verbatim(built):
    text = (built / "reports/report.md").read_text()
    assert "| dataset | fashion-mnist:" in text
    assert "| device, MLP VAE | cpu (test, 2 threads) |" in text
    assert "| started from commit | unknown (no git commit here) |" in text
    assert "epoch 1 and best (epoch 3 of 3)" in text
    # the fixture's params.yaml shortens t-SNE: the one param that differs from the defaults
    assert "| `visualize.tsne_iterations` | `250` | `350` |" in text
    assert vizdata.EVALUATION_MD.strip() in text
    assert vizdata.SWEEP_MD.strip() in text
    # one line per figure, with a number from evaluate.json where it has one
    assert "FID 80.0 -> 60.0" in text


def test_report_shows_pictures_and_one_results_table_before_the_long_tables(built):
    text = (built / "reports/report.md").read_text()
    glance, rest = text.split("## At a glance", 1)[1].split("## Evaluation", 1)
    # samples and reconstructions of both models, and nothing else, come first
    assert sorted(Path(link).name for link in figure_links(glance)) == sorted(
        f"{m}_{name}.png" for m in ("mlp", "conv") for name in ("reconstructions", "samples_8x8"))
    assert "| MLP VAE | `epoch_01` | 5.500 | 545.00 |" in glance
    assert "| Conv VAE | `best` |" in glance
    # the codecs beside the models: the best checkpoint (4.5 bits/dim) beats PNG and the
    # histogram, not xz
    assert ("The same test images cost PNG 5.200, xz 3.900, the histogram 4.600 bits/dim"
            in glance)
    assert "MLP VAE beats PNG and the histogram; Conv VAE beats PNG and the histogram" in glance
    assert vizdata.EVALUATION_MD.strip() in rest     # the per-checkpoint tables after them
    # what each number means is said once, in evaluation.md's last section: pointed to here
    assert "*How each number is computed* under Evaluation, below" in glance
    # the run named in one line above the pictures; its details below them
    head = text.split("## At a glance")[0]
    assert head.startswith("# VAE report: fashion-mnist\n\n**Made from** commit unknown")
    assert "## What was run" in glance and "## What was run" not in head


def test_git_revision_names_the_commit_and_changed_inputs_not_outputs(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    lock = {"stages": {"train": {"deps": [{"path": "code.py"}, {"path": "data/x"}],
                                 "outs": [{"path": "reports/figures"},
                                          {"path": "reports/evaluate.json"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    for name in ("code.py", "README.md", "params.yaml", "dvc.yaml", "reports/figures/a.png",
                 "reports/evaluate.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    inputs, outputs = pipeline_files(tmp_path / "dvc.lock")
    assert inputs == {"dvc.yaml", "code.py", "data/x"}
    assert {"reports/figures", "reports/evaluate.json"} <= outputs
    rev, changed = git_revision(tmp_path, inputs)
    assert re.fullmatch(r"`[0-9a-f]{12}`", rev) and changed == []
    # what a run (or `dvc exp run -S`) rewrites, and files no stage reads
    for name in ("params.yaml", "dvc.lock", "reports/figures/a.png", "reports/evaluate.json",
                 "README.md"):
        (tmp_path / name).write_text("v2")
    assert git_revision(tmp_path, inputs) == (rev, [])
    (tmp_path / "code.py").write_text("v2")       # an edit to an input
    (tmp_path / "dvc.yaml").write_text("v2")
    assert git_revision(tmp_path, inputs) == (rev, ["code.py", "dvc.yaml"])
    assert git_revision(tmp_path / "nowhere")[1] is None


def test_report_html_is_one_self_contained_file(built):
    page = (built / "reports/report.html").read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(srcs) == len(EXPECTED_FIGURES) + 2
    assert all(s.startswith(("data:image/png;base64,", "data:image/gif;base64,")) for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', page)   # nothing to fetch
    assert page.count("<table>") >= 5
    assert "<h3>MLP VAE (test set)</h3>" in page                 # evaluation.md rendered


def test_a_rerun_on_the_same_inputs_writes_the_same_figures(built, tmp_path, monkeypatch):
    # DVC hashes outputs: identical inputs must give identical bytes (and no stale figure)
    figures = built / "reports/figures"
    before = {p.name: p.read_bytes() for p in figures.iterdir()}
    (figures / "left_over_from_an_older_run.png").write_bytes(b"x")
    monkeypatch.chdir(built)
    assert vizdata.run_stage(built) == 0
    after = {p.name: p.read_bytes() for p in figures.iterdir()}
    assert after == before


def test_report_builds_without_the_optional_sweep_inputs(tmp_path):
    png = tmp_path / "figures/a.png"
    png.parent.mkdir()
    Image.new("RGB", (20, 10), "white").save(png)
    entries = [FigureEntry(png, "Group", "A figure", "What it shows.")]
    info = RunInfo(revision="`abc`", dataset="mnist")
    md = build_markdown(info, entries, tmp_path, evaluation_md=None, sweep_md=None,
                        sweep_gifs={})
    assert "_Not available: `reports/sweep.md` was not found" in md
    assert "_Not available: `reports/evaluation.md` was not found" in md
    assert figure_links(md) == ["figures/a.png"]
    page = markdown_to_html(md, tmp_path, "t")
    assert page.count("data:image/png;base64,") == 1 and "Not available" in page
    png.unlink()
    with pytest.raises(FileNotFoundError):  # a listed figure that vanished is an error
        markdown_to_html(md, tmp_path, "t")


def test_changed_params_lists_exactly_the_changed_keys():
    params = parse_params({"beta": 0.5, "mlp": {"hidden": [400, 400]},
                           "visualize": {"scatter_points": 1000}})
    assert changed_params(params) == [("beta", 0.5, 1.0), ("mlp.hidden", [400, 400], [512, 256]),
                                      ("visualize.scatter_points", 1000, 3000)]
    assert changed_params(parse_params({})) == []


def test_evaluate_output_that_breaks_the_contract_is_named(tmp_path):
    labels = np.arange(5, dtype=np.int64)
    good = {"mu": np.zeros((5, 2), np.float32), "logvar": np.zeros((5, 2), np.float32),
            "labels": labels, "samples": np.zeros((100, 1, 4, 4), np.float32),
            "recon_index": np.arange(3, dtype=np.int64),
            "recon": np.zeros((3, 1, 4, 4), np.float32),
            "frozen_sigmas": np.array([0.1, 0.5, 1.0], np.float32),
            "frozen": np.zeros((4, 64, 1, 4, 4), np.float32)}
    np.savez(tmp_path / "ok.npz", **good)
    assert set(load_evaluation(tmp_path / "ok.npz", labels)) == set(good)
    np.savez(tmp_path / "no_mu.npz", **{k: v for k, v in good.items() if k != "mu"})
    with pytest.raises(InputError, match=r"no_mu.npz: missing arrays mu"):
        load_evaluation(tmp_path / "no_mu.npz", labels)
    np.savez(tmp_path / "f64.npz", **(good | {"mu": good["mu"].astype(np.float64)}))
    with pytest.raises(InputError, match="'mu' must be float32"):
        load_evaluation(tmp_path / "f64.npz", labels)
    with pytest.raises(InputError, match="not the test split's labels"):
        load_evaluation(tmp_path / "ok.npz", labels[::-1].copy())
    with pytest.raises(InputError, match="not found; run `dvc repro evaluate`"):
        load_evaluation(tmp_path / "absent.npz", labels)


def test_stage_stops_with_one_line_naming_a_bad_input(tmp_path, monkeypatch, capsys):
    vizdata.write_inputs(tmp_path, sweep=False)
    (tmp_path / "data/evaluate/conv/best.npz").unlink()
    monkeypatch.chdir(tmp_path)
    assert vizdata.run_stage(tmp_path) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "data/evaluate/conv/best.npz: not found" in err
    assert not (tmp_path / "reports/report.md").exists()


# --------------------------------------------------------------------------------------------
# DVC: the stage as declared, its plots, and the offline page


def test_offline_plots_template_matches_dvc_render():
    from dvc_render.vega import VegaRenderer

    assert "html_template = plots_offline.html" in (REPO / ".dvc/config").read_text()
    page = (REPO / ".dvc/plots_offline.html").read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC's CDN tags never go in
    assert "<script src" not in page
    for name, version in re.findall(r"npm/(vega(?:-lite|-embed)?)@([0-9][^\"/]*)",
                                    VegaRenderer.SCRIPTS):
        # rerun tools/offline_plots_template.py after a DVC upgrade changes these
        assert f"/* {name}@{version} (BSD-3-Clause) */" in page


def test_dvc_yaml_declares_what_the_stage_reads_and_writes():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["visualize"]
    deps = set(stage["deps"])
    for path in ("data/evaluate", "reports/evaluate.json", "reports/evaluation.md",
                 "reports/sweep.md", "reports/sweep", "reports/train/mlp_history.csv",
                 "reports/train/conv_history.csv", "models/mlp/best.pt",
                 "models/conv/epoch_01.pt", "data/processed/${data.dataset}/test.npz"):
        assert path in deps
    assert stage["params"] == ["seed", "data.dataset", "data.path", "visualize"]
    # every --flag path of the command is a dep or an out (paths said once, in dvc.yaml)
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]}
    assert outs == {"reports/figures", "reports/report.md", "reports/report.html"}
    args = dict(re.findall(r"--([\w-]+) (\S+)", stage["cmd"]))
    for flag, path in args.items():
        covered = path in deps or path in outs or any(d.startswith(path + "/") for d in deps)
        assert covered, f"--{flag} {path} is neither a dep nor an out"


def test_dvc_plots_show_draws_the_declared_plots_offline(tmp_path):
    """The repo's top-level plots and offline template, on a minimal project with tiny files."""
    project = tmp_path / "p"
    project.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = [str(Path(sys.executable).parent / "dvc")]

    def run(*cmd):
        proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (project / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    shutil.copy2(REPO / ".dvc/config", project / ".dvc/config")
    shutil.copy2(REPO / ".dvc/plots_offline.html", project / ".dvc/plots_offline.html")
    vizdata.write_inputs(project, sweep=False)  # the histories among them
    figures = project / "reports/figures"
    figures.mkdir()
    for name in ("mlp_traversal.png", "conv_samples_8x8.png"):
        Image.new("L", (30, 20), 128).save(figures / name)
    run(*dvc, "plots", "show", "-o", "out")
    page = (project / "out/index.html").read_text()
    for name in ("mlp_traversal.png", "conv_samples_8x8.png"):
        assert f"<p>reports/figures/{name}</p>" in page          # the image plots
    for plot_id in ("reports_train_mlp_history_csv", "reports_train_conv_history_csv",
                    "val_nelbo"):
        assert f"vegaEmbed('#{plot_id}', spec)" in page          # the history curves
    assert "/* vega-embed@" in page and not re.search(r'src="https?://', page)


@pytest.mark.slow
def test_visualize_through_dvc_then_plots_show_and_diff_offline(dvc_project):
    """The declared stage runs through DVC; `dvc plots show/diff` draw its figures offline."""
    project = dvc_project({"visualize": {"tsne_iterations": 250}})
    shutil.copy2(REPO / ".dvc/plots_offline.html", project.root / ".dvc/plots_offline.html")
    project.dvc("config", "plots.html_template", "plots_offline.html")
    vizdata.write_inputs(project.root, params={})   # what the upstream stages would write
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "inputs")
    # --single-item: the upstream stages are not run (evaluate and the sweep live elsewhere)
    run = project.dvc("repro", "--single-item", "visualize")
    assert "Running stage 'visualize'" in run.stdout
    report = (project.root / "reports/report.md").read_text()
    assert re.search(r"\| started from commit \| `[0-9a-f]{12}` \|", report)
    # the stage's own outputs and dvc.lock changed during the run: not changes to its inputs
    assert "| uncommitted changes to the pipeline's inputs | none |" in report
    made_from = report.split("\n")[2]
    assert made_from.startswith("**Made from** commit `") and \
        "(no uncommitted change to the pipeline's inputs), with " in made_from
    assert "`visualize.tsne_iterations` = `250`" in made_from

    shown = project.dvc("plots", "show", "-o", "plots_out")
    page = (project.root / "plots_out/index.html").read_text()
    for name in ("mlp_traversal.png", "conv_latent_tsne.png", "training_images.png"):
        assert f"reports/figures/{name}" in page            # the image plots are on the page
    for plot_id in ("reports_train_mlp_history_csv", "val_nelbo"):  # the history curves
        assert f"vegaEmbed('#{plot_id}', spec)" in page
    assert not re.search(r'src="https?://', page)          # vega inlined, nothing from a CDN
    assert "file://" in shown.stdout

    project.git("add", "-A")
    project.git("commit", "-q", "-m", "figures")
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    params["visualize"]["traversal_span"] = 2.0
    (project.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "visualize" in project.dvc("status", "visualize").stdout
    project.dvc("repro", "--single-item", "visualize")
    project.dvc("plots", "diff", "HEAD", "-o", "diff_out")
    page = (project.root / "diff_out/index.html").read_text()
    # both revisions' traversal figures, side by side
    assert page.count("mlp_traversal.png") >= 2
    assert "HEAD" in page and "workspace" in page


# --------------------------------------------------------------------------------------------
# Class names are text: escaped in the Markdown, never links the HTML inliner would follow

HOSTILE = ("![x](../../../etc/passwd)", "<img src=x onerror=alert(1)>", "a | b", "$\\alpha$",
           "*bold* [link](http://example.com)")


def test_class_names_stay_text_in_the_report_and_its_html(tmp_path, monkeypatch):
    from vaepipe.data.names import markdown_text
    from vaepipe.figures import report
    from vaepipe.io import write_json

    names = tuple(f"{HOSTILE[i % len(HOSTILE)]} {i}" for i in range(10))  # every pair hostile
    root = tmp_path / "viz"
    root.mkdir()
    vizdata.write_inputs(root)
    # the class names the stage reads: as a folder's would be, from the split's manifest
    write_json(root / f"data/processed/{vizdata.DATASET}/manifest.json",
               {"class_names": list(names)})
    inlined = []
    real_data_uri = report.data_uri
    monkeypatch.setattr(report, "data_uri",
                        lambda path: inlined.append(Path(path).resolve()) or real_data_uri(path))
    monkeypatch.chdir(root)
    assert vizdata.run_stage(root) == 0
    text = (root / "reports/report.md").read_text()
    html = (root / "reports/report.html").read_text()
    # the interpolation's caption names its two classes: each as the characters it holds
    shown = [n for n in names if markdown_text(n) in text]
    assert len(shown) == 2, shown
    rendered = {"![x](../../../etc/passwd)": "![x](../../../etc/passwd)",
                "<img src=x onerror=alert(1)>": "&lt;img src=x onerror=alert(1)&gt;",
                "a | b": "a | b", "$\\alpha$": "$\\alpha$",
                "*bold* [link](http://example.com)": "*bold* [link](http://example.com)"}
    for name in shown:
        hostile, number = name.rsplit(" ", 1)
        assert f"{rendered[hostile]} {number}" in html, name
    assert not [link for link in figure_links(text) if "passwd" in link]
    assert inlined and all(p.is_relative_to((root / "reports").resolve()) for p in inlined)
    assert "<img src=x" not in html and 'href="http://example.com"' not in html
    assert "<em>bold</em>" not in html


def test_the_html_inliner_reads_no_file_outside_the_report_folder(tmp_path):
    base = tmp_path / "reports"
    base.mkdir()
    secret = tmp_path / "secret.png"
    Image.new("L", (2, 2)).save(secret)
    with pytest.raises(ValueError, match=r"points outside .*only the report's own files"):
        markdown_to_html("![x](../secret.png)", base, "t")
    (base / "link.png").symlink_to(secret)  # a symlink out of the folder is refused too
    with pytest.raises(ValueError, match="points outside"):
        markdown_to_html("![x](link.png)", base, "t")
    Image.new("L", (2, 2)).save(base / "own.png")
    assert "data:image/png;base64," in markdown_to_html("![x](own.png)", base, "t")
