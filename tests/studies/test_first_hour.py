"""What a new user meets first: reproducible random weights, their own modules, names checked
before data, honest notices, compact results and quiet logs."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nndist.cli import main
from nndist.errors import NndistError
from nndist.progress import LineProgress, progress_bar
from nndist.results import layout, load_run
from nndist.studies import GradientsConfig, ReproduceConfig, run_gradients, run_reproduce
from nndist.studies.gradient_study import GradientStudy


def _cfg(**kw) -> GradientsConfig:
    base = dict(model="paper_cnn", data="shapes", samples=24, batch_size=8, device="cpu", chunk_batches=1)
    base.update(kw)
    return GradientsConfig(**base)


def test_random_weights_are_seeded_recorded_and_said(tmp_path, capsys):
    a = run_gradients(_cfg(), tmp_path / "a", progress=True, report=False)
    b = run_gradients(_cfg(), tmp_path / "b", progress=False, report=False)
    c = run_gradients(_cfg(seed=1), tmp_path / "c", progress=False, report=False)
    assert "random weights (no --weights given), seeded with --seed 0" in capsys.readouterr().err
    for layer in ("conv1", "fc2"):
        ea, eb = (np.load(r / layout.per_sample_file(layer, "emission")) for r in (a, b))
        assert np.array_equal(ea, eb)  # two identical commands, identical results
    m = json.loads((a / layout.MANIFEST).read_text())
    assert m["random_weights"] is True and any("random weights" in n for n in m["notices"])
    assert m["model_fingerprint"] == json.loads((b / layout.MANIFEST).read_text())["model_fingerprint"]
    assert m["model_fingerprint"] != json.loads((c / layout.MANIFEST).read_text())["model_fingerprint"]
    assert torch.initial_seed() is not None  # the caller's generator was forked, not reseeded


def test_the_global_random_state_is_left_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_gradients(_cfg(samples=8), tmp_path / "r", progress=False, report=False)
    assert torch.equal(torch.rand(3), expected)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_a_users_module_through_run_gradients_and_a_changed_model_refused_on_resume(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = SmallCNN()
    run = run_gradients(_cfg(model=model), tmp_path / "mine", progress=False)
    m = json.loads((run / layout.MANIFEST).read_text())
    assert m["config"]["model"] == "module:test_first_hour.SmallCNN" and set(m["layers"]) == {"conv", "head"}
    assert any("the data's own per-channel mean and std" in n for n in m["notices"])
    from nndist.data import load_split

    mean, std = load_split("shapes", "test", progress=False).pixel_statistics(m["sample_order"])
    np.testing.assert_allclose(m["normalisation"]["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(m["normalisation"]["std"], std, rtol=1e-12)
    # interrupted, then resumed with a module of the same class but other weights: refused
    calls = {"n": 0}
    original = GradientStudy._process

    def stop(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(GradientStudy, "_process", stop)
    with pytest.raises(KeyboardInterrupt):
        run_gradients(_cfg(model=model), tmp_path / "cut", progress=False)
    monkeypatch.setattr(GradientStudy, "_process", original)
    other = SmallCNN()
    with pytest.raises(NndistError, match="not the one the run started with"):
        run_gradients(_cfg(model=other), tmp_path / "cut", resume=True, progress=False)
    with pytest.raises(NndistError, match="passed in from Python"):
        run_gradients(None, tmp_path / "cut", resume=True, progress=False)
    done = run_gradients(_cfg(model=model), tmp_path / "cut", resume=True, progress=False, report=False)
    assert json.loads((done / layout.MANIFEST).read_text())["finished"]


def test_a_factory_through_run_reproduce(tmp_path):
    cfg = ReproduceConfig(model=SmallCNN, layers=("conv", "head"), inits=("orthogonal", "zeros"), data="shapes", epochs=1,
                          train_samples=64, valid_samples=32, device="cpu", eval_batch_size=64)
    run = run_reproduce(cfg, tmp_path / "f", progress=False, report=False)
    m = json.loads((run / layout.MANIFEST).read_text())
    assert m["config"]["model"] == "callable:test_first_hour.SmallCNN"
    assert m["samples"] == {"train": 64, "valid": 32, "random": 32}
    w = pd.read_parquet(run / "weights.parquet")
    assert set(w["layer"]) == {"conv", "head"} and set(w["init"]) == {"orthogonal", "zeros"}
    # the checkpoints are readable without the model code
    from nndist.models.weightfiles import open_weights

    with open_weights(run / layout.checkpoint_file("orthogonal", "after")) as src:
        assert set(src.names()) == {"conv.weight", "conv.bias", "head.weight", "head.bias"}


def test_names_are_checked_before_the_data_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("NNDIST_CACHE", str(tmp_path / "empty-cache"))  # cifar10 is not there, and offline
    with pytest.raises(NndistError, match="unknown init scheme 'sideways'.*orthogonal"):
        run_reproduce(ReproduceConfig(data="cifar10", inits=("sideways",)), tmp_path / "a", progress=False)
    with pytest.raises(NndistError, match="unknown layer name.*conv9"):
        run_reproduce(ReproduceConfig(data="cifar10", layers=("conv9",)), tmp_path / "b", progress=False)
    with pytest.raises(NndistError, match="unknown model 'resnet9000'"):
        run_gradients(_cfg(model="resnet9000", data="cifar10"), tmp_path / "c", progress=False)
    with pytest.raises(NndistError, match="unknown layer 'conv9'"):
        run_gradients(_cfg(data="cifar10", layers=("conv9",)), tmp_path / "d", progress=False)
    assert not (tmp_path / "empty-cache" / "cifar10").exists()


def test_a_torchvision_head_is_fitted_to_the_data_and_said(tmp_path):
    cfg = _cfg(model="torchvision:mobilenet_v3_small", samples=4, batch_size=4, image_size=64, layers=("classifier.3",))
    run = run_gradients(cfg, tmp_path / "fit", progress=False, report=False)
    m = json.loads((run / layout.MANIFEST).read_text())
    assert m["layers"]["classifier.3"]["c_out"] == 10
    assert any("replaced the 1000-class head classifier.3 by a 10-class one" in n for n in m["notices"])
    kept = run_gradients(_cfg(**{**cfg.__dict__, "keep_head": True}), tmp_path / "keep", progress=False, report=False)
    assert json.loads((kept / layout.MANIFEST).read_text())["layers"]["classifier.3"]["c_out"] == 1000


def test_channel_matrices_are_compact_and_only_those_asked_for(tmp_path):
    run = run_gradients(_cfg(channel_matrices=("conv2",)), tmp_path / "m", progress=False, report=False)
    with np.load(run / layout.CHANNEL_NORMS) as norms:
        assert norms.files == ["conv2"] and norms["conv2"].dtype == np.float32
    auto = run_gradients(_cfg(), tmp_path / "auto", progress=False, report=False)
    with np.load(auto / layout.CHANNEL_NORMS) as norms:
        assert "conv1" in norms.files and "fc1" not in norms.files  # fc1 is 512 x 1024 > 256 x 256
    with pytest.raises(NndistError, match="channel_matrices: unknown layer"):
        run_gradients(_cfg(channel_matrices=("nope",)), tmp_path / "bad", progress=False)


def test_figure4_boxes_are_exact_where_per_sample_arrays_exist(tmp_path):
    from nndist.report.figures_gradients import exact_boxes

    run = run_gradients(_cfg(samples=40, layer_figures=("conv2",)), tmp_path / "f", progress=False)
    assert (run / layout.figure_file("fig4", "conv2")).is_file() and not (run / layout.figure_file("fig4", "conv1")).is_file()
    assert (run / layout.figure_file("overview")).is_file()
    boxes = exact_boxes(load_run(run), "conv2", "emission", 15, tukey=False)
    em = np.load(run / layout.per_sample_file("conv2", "emission")).astype(np.float64)
    for c, box in enumerate(boxes):
        np.testing.assert_allclose([box["q1"], box["med"], box["q3"]], np.quantile(em[:, c], [0.25, 0.5, 0.75]), rtol=1e-12)


def test_the_gradients_command_prints_what_is_measured_and_only_measurable_claims(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["gradients", "--model", "paper_cnn", "--data", "shapes", "--samples", "16", "--device", "cpu", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "5 layers measured (16 samples); unsupported: 0; no channel-to-channel gradient: 0" in printed
    assert "not measured by this run: 1, 2, 3" in printed and "(16 images: weak)" in printed
    html = (out / layout.REPORT).read_text()
    assert "paper_cnn (random weights)" in html and "seeded with --seed 0" in html  # the report says so too
    assert main(["gradients", "--resume", "--out", str(out), "--no-progress", "--no-report"]) == 0  # nothing but the directory


def test_progress_in_a_log_is_a_few_lines():
    stream = io.StringIO()
    bar = LineProgress(1000, "features", "img", stream=stream, interval=3600)
    for _ in range(1000):
        bar.update()
    bar.close()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("features: started") and "1000/1000 img" in lines[1]
    assert "img/s" in lines[1] and lines[1].startswith("features: done")
    quiet = progress_bar(10, "x", enabled=False)
    quiet.update(3)
    quiet.close()
    assert isinstance(progress_bar(10, "x"), LineProgress)  # stderr is not a terminal under pytest
