"""An interrupted training goes on from its saved state to the bytes of an uninterrupted run:
in process, for the VAE loop (with the beta sweep's frames) and the classifier; the same
inputs find a state, other inputs never do; a damaged state is ignored with one line."""
import pickle

import numpy as np
import pytest
import torch

from vaepipe.config import ConvConfig, MLPConfig
from vaepipe.evaluate.classifier import Classifier, train_classifier
from vaepipe.models.vae import build_model
from vaepipe.sweep.frames import FrameRecorder
from vaepipe.train.loop import fit
from vaepipe.train.resume import RESUME_ENV, Resume


class Killed(Exception):
    """Stands for SIGKILL: raised from a hook after some epoch."""


@pytest.fixture(autouse=True)
def _resume_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(RESUME_ENV, str(tmp_path / "states"))


def _data(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (96, 1, 28, 28), dtype=np.uint8)
    (tmp_path / "train.npz").write_bytes(images[:64].tobytes())
    (tmp_path / "val.npz").write_bytes(images[64:].tobytes())
    return images[:64], images[64:], [tmp_path / "train.npz", tmp_path / "val.npz"]


def _run(tmp_path, out, cfg, inputs, kill_after=None, lines=None, kind="mlp", recorder=None):
    """One fit of a fresh model (same seed: the same initial weights), like a stage's rerun."""
    torch.manual_seed(0)
    extra = {"hidden": (16,)} if kind == "mlp" else {"channels": (4, 8)}
    model = build_model(kind, image_shape=(1, 28, 28), latent_dim=2, **extra)
    train, val, files = _data(tmp_path)
    resume = Resume(f"train-{kind}", {"cfg": cfg.model_dump(), "out": "same"}, files,
                    log=None if lines is None else lines.append)
    if recorder is not None:
        recorder.frames = []
        recorder.start(model)
        resume.attach("frames", recorder.state, recorder.load_state)

    def epoch_done(result):
        if kill_after is not None and len(result.history) == kill_after:
            raise Killed

    try:
        result = fit(model, train, val, cfg, 1.0, 3, torch.device("cpu"), out, progress=False,
                     on_epoch=epoch_done, on_batch=recorder, resume=resume)
    except Killed:
        resume.release()  # what the end of a killed process does
        raise
    resume.finish()
    return result


def _untimed(history):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}
            for row in history]


@pytest.mark.parametrize("kind, cfg", [
    ("mlp", MLPConfig(epochs=4, batch_size=16, warmup_epochs=3, hidden=(16,), latent_dim=2)),
    ("conv", ConvConfig(epochs=4, batch_size=16, channels=(4, 8), latent_dim=2))])
def test_a_killed_fit_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path, kind, cfg):
    whole = _run(tmp_path, tmp_path / "whole", cfg, None, kind=kind)
    lines: list[str] = []
    with pytest.raises(Killed):
        _run(tmp_path, tmp_path / "cut", cfg, None, kill_after=2, lines=lines, kind=kind)
    assert lines == [] and len(list((tmp_path / "states").glob("*.pt"))) == 1
    # DVC deletes a stage's outputs before it reruns it: the state brings back epoch_01 / best
    for path in (tmp_path / "cut").iterdir():
        path.unlink()
    resumed = _run(tmp_path, tmp_path / "cut", cfg, None, lines=lines, kind=kind)
    assert len(lines) == 1 and lines[0].startswith(f"train-{kind}: resuming at epoch 3 of 4 ")
    assert _untimed(resumed.history) == _untimed(whole.history)
    assert resumed.best_epoch == whole.best_epoch
    for name in ("epoch_01.pt", "best.pt", "final.pt"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert list((tmp_path / "states").glob("*.pt")) == []  # a finished run removes its state


def test_the_sweeps_frames_survive_a_resume(tmp_path):
    cfg = ConvConfig(epochs=3, batch_size=16, channels=(4, 8), latent_dim=2)
    probe = torch.as_tensor(_data(tmp_path)[1][:6])
    frames = {}
    for name, kill in (("whole", None), ("cut", 1), ("again", None)):
        recorder = FrameRecorder(probe, probe[:2], [0, 2, 5, 9, 12], 4)
        try:
            _run(tmp_path, tmp_path / name, cfg, None, kill_after=kill, kind="conv",
                 recorder=recorder, lines=[])
        except Killed:
            continue
        frames[name] = recorder.frames
    assert [(f.epoch, f.batch) for f in frames["again"]] == [(0, 0), (1, 2), (2, 1), (3, 1),
                                                              (3, 4)]
    for a, b in zip(frames["whole"], frames["again"], strict=True):
        assert np.array_equal(a.mu, b.mu) and np.array_equal(a.recon, b.recon)


def test_other_inputs_never_find_a_state_and_say_so(tmp_path):
    cfg = MLPConfig(epochs=3, batch_size=16, warmup_epochs=0, hidden=(16,), latent_dim=2)
    with pytest.raises(Killed):
        _run(tmp_path, tmp_path / "a", cfg, None, kill_after=1, lines=[])
    lines: list[str] = []
    other = cfg.model_copy(update={"lr": 1e-3})
    result = _run(tmp_path, tmp_path / "b", other, None, lines=lines)
    assert len(result.history) == 3
    assert lines == ["train-mlp: a saved state of other params, data or code is not used; "
                     "starting at epoch 1"]


def test_a_truncated_state_is_ignored_with_one_line(tmp_path):
    cfg = MLPConfig(epochs=3, batch_size=16, warmup_epochs=0, hidden=(16,), latent_dim=2)
    whole = _run(tmp_path, tmp_path / "whole", cfg, None)
    with pytest.raises(Killed):
        _run(tmp_path, tmp_path / "cut", cfg, None, kill_after=2, lines=[])
    (state,) = (tmp_path / "states").glob("*.pt")
    state.write_bytes(state.read_bytes()[:1000])
    lines: list[str] = []
    again = _run(tmp_path, tmp_path / "cut", cfg, None, lines=lines)
    assert len(lines) == 1 and "is unreadable and was ignored" in lines[0]
    assert lines[0].endswith("starting at epoch 1")
    assert _untimed(again.history) == _untimed(whole.history)


def test_outputs_removed_under_a_running_fit_keep_the_last_whole_state(tmp_path):
    """A stage whose folder is deleted under it (DVC removing a failed experiment's copy while
    an orphaned stage runs on): the state of the last epoch whose checkpoints were all there
    is kept, the run says so in one line and saves no more; a rerun resumes from it."""
    import shutil

    cfg = MLPConfig(epochs=4, batch_size=16, warmup_epochs=3, hidden=(16,), latent_dim=2)
    whole = _run(tmp_path, tmp_path / "whole", cfg, None)
    out, lines = tmp_path / "cut", []

    def delete_in_epoch_three(epoch, batch, model):
        if epoch == 3 and batch == 1:
            shutil.rmtree(out)

    torch.manual_seed(0)
    model = build_model("mlp", image_shape=(1, 28, 28), latent_dim=2, hidden=(16,))
    train, val, files = _data(tmp_path)
    resume = Resume("train-mlp", {"cfg": cfg.model_dump(), "out": "same"}, files,
                    log=lines.append)
    fit(model, train, val, cfg, 1.0, 3, torch.device("cpu"), out, progress=False,
        on_batch=delete_in_epoch_three, resume=resume)
    resume.release()
    assert lines == [f"train-mlp: {out / 'epoch_01.pt'} removed while the stage ran; this "
                     f"run neither resumes nor saves a state"]
    assert torch.load(resume.path, weights_only=True)["epoch"] == 2
    shutil.rmtree(out)
    lines.clear()
    again = _run(tmp_path, out, cfg, None, lines=lines)
    assert lines[0].startswith("train-mlp: resuming at epoch 3 of 4")
    assert _untimed(again.history) == _untimed(whole.history)
    for name in ("epoch_01.pt", "best.pt", "final.pt"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_a_second_process_with_the_same_inputs_neither_resumes_nor_saves(tmp_path):
    _, _, files = _data(tmp_path)
    first, lines = Resume("train-mlp", {"a": 1}, files), []
    assert first.load() is None
    second = Resume("train-mlp", {"a": 1}, files, log=lines.append)
    assert second.load() is None and not second.enabled
    assert lines == ["train-mlp: another process is training with the same inputs; this run "
                     "neither resumes nor saves a state"]
    second.save(1, 2, {})
    assert not second.path.exists()
    first.finish()


def test_a_killed_classifier_resumes_to_the_same_weights(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (80, 1, 28, 28), dtype=np.uint8)
    y = np.arange(80) % 10
    files = _data(tmp_path)[2]

    def run(kill):
        torch.manual_seed(0)
        model = Classifier((1, 28, 28), 10, (4,), 8)
        resume = Resume("train-classifier", {"x": 1}, files)

        def log(line):
            if kill and line.startswith(f"classifier epoch {kill}/"):
                raise Killed

        try:
            history = train_classifier(model, x, y, 3, 16, 3e-3, 0.0, 0, torch.device("cpu"),
                                       log=log, resume=resume)
        except Killed:
            resume.release()
            raise
        resume.finish()
        return model, history

    whole, whole_history = run(None)
    with pytest.raises(Killed):
        run(2)
    resumed, history = run(None)
    assert _untimed(history) == _untimed(whole_history)
    # the checkpoint pickles the history: the same bytes, not only the same values
    assert pickle.dumps(_untimed(history)) == pickle.dumps(_untimed(whole_history))
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
