"""``nndist gradients`` over a dataset: outputs, exactness against the API, resume, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nndist.cli import main
from nndist.data import load_split
from nndist.studies.gradient_config import GradientsConfig
from nndist.studies.gradient_study import GradientStudy, run_gradients
from nndist.probes.gradients import emission_absorption
from nndist.models import create_model, save_checkpoint
from nndist.paper import CIFAR10_MEAN, CIFAR10_STD
from nndist.results import layout
from nndist.stats import SUMMARY_COLUMNS

LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]


@pytest.fixture(scope="module")
def paper_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "paper.safetensors"
    save_checkpoint(path, create_model("paper_cnn"), {"model": "paper_cnn"})
    return path


def config(ckpt: Path, **kw) -> GradientsConfig:
    base = dict(model="paper_cnn", weights=str(ckpt), data="shapes", samples=90, batch_size=16, device="cpu", chunk_batches=2)
    base.update(kw)
    return GradientsConfig(**base)


def test_gradients_run_matches_api(tmp_path, paper_ckpt):
    run = run_gradients(config(paper_ckpt, channel_matrices="all", layer_figures="all"), tmp_path / "g", progress=False)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["kind"] == "gradients" and manifest["finished"]
    assert list(manifest["layers"]) == LAYERS
    assert manifest["identity_max_rel_diff"] < 1e-4
    order = np.load(run / "per_sample" / "order.npy")
    assert list(order) == manifest["sample_order"] and len(order) == 90
    stats = pd.read_parquet(run / "gradients.parquet")
    assert list(stats.columns) == ["layer", "channel", "stat", *SUMMARY_COLUMNS]
    assert set(stats["stat"]) == {"emission", "absorption"}
    assert (stats["n"] == 90).all()
    # Per-sample arrays equal the public API on the same samples, in the recorded order.
    data = load_split("shapes", "test", progress=False)
    model = create_model("paper_cnn")
    from nndist.models import load_weights

    load_weights(model, paper_ckpt)
    x = data.normalized(CIFAR10_MEAN, CIFAR10_STD, indices=order[:16])
    ref = emission_absorption(model.eval(), x, data.labels[order[:16]])
    with np.load(run / layout.CHANNEL_NORMS) as npz:
        norms = {name: npz[name] for name in npz.files}
    for layer in LAYERS:
        em = np.load(run / "per_sample" / f"{layer}.emission.npy", mmap_mode="r")
        ab = np.load(run / "per_sample" / f"{layer}.absorption.npy", mmap_mode="r")
        assert em.shape == (90, manifest["layers"][layer]["c_out"])
        assert ab.shape == (90, manifest["layers"][layer]["c_in"])
        np.testing.assert_allclose(em[:16], ref[layer].emission.numpy(), rtol=1e-6)
        np.testing.assert_allclose(ab[:16], ref[layer].absorption.numpy(), rtol=1e-6)
        # Summary means agree with the per-sample arrays; identity holds per sample.
        mean_em = stats[(stats.layer == layer) & (stats.stat == "emission")].sort_values("channel")["mean"].to_numpy()
        np.testing.assert_allclose(mean_em, em.astype(np.float64).mean(0), rtol=1e-6)
        np.testing.assert_allclose(em.sum(1), ab.sum(1), rtol=1e-4)
        assert norms[layer].shape == (manifest["layers"][layer]["c_out"], manifest["layers"][layer]["c_in"])
        np.testing.assert_allclose(norms[layer].sum(1), em.astype(np.float64).mean(0), rtol=1e-5)
        assert (run / "figures" / f"fig4_{layer}.png").is_file()
        assert (run / "figures" / f"heatmap_{layer}.png").is_file()
    assert (run / "report.html").is_file() and (run / "claims.csv").is_file()


def test_gradients_no_per_sample_and_layers(tmp_path, paper_ckpt):
    run = run_gradients(config(paper_ckpt, per_sample=False, layers=("conv2", "fc1"), samples=40), tmp_path / "g", progress=False, report=False)
    assert not (run / "per_sample").exists() or not list((run / "per_sample").glob("*.npy"))
    stats = pd.read_parquet(run / "gradients.parquet")
    assert set(stats["layer"]) == {"conv2", "fc1"}


def test_gradients_resume_after_interruption(tmp_path, paper_ckpt, monkeypatch):
    cfg = config(paper_ckpt)
    ref = run_gradients(cfg, tmp_path / "ref", progress=False, report=False)
    original = GradientStudy._process
    calls = {"n": 0}

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:  # the second chunk (batches 2-3) is interrupted
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(GradientStudy, "_process", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_gradients(cfg, tmp_path / "res", progress=False, report=False)
    monkeypatch.setattr(GradientStudy, "_process", original)
    state = torch.load(tmp_path / "res" / "state" / "gradients.pt", weights_only=True)
    assert state["done"] == 2
    res = run_gradients(cfg, tmp_path / "res", resume=True, progress=False, report=False)
    for layer in LAYERS:
        for stat in ("emission", "absorption"):
            a = np.load(ref / "per_sample" / f"{layer}.{stat}.npy")
            b = np.load(res / "per_sample" / f"{layer}.{stat}.npy")
            assert np.array_equal(a, b)
    sa, sb = pd.read_parquet(ref / "gradients.parquet"), pd.read_parquet(res / "gradients.parquet")
    pd.testing.assert_frame_equal(sa[["layer", "channel", "stat", "n", "min", "max", "q50"]], sb[["layer", "channel", "stat", "n", "min", "max", "q50"]])
    np.testing.assert_allclose(sa["mean"], sb["mean"], rtol=1e-9)


def test_cli_gradients_errors(tmp_path, capsys):
    code = main(["gradients", "--model", "paper_cnn", "--data", "shapes", "--samples", "999999", "--out", str(tmp_path / "x"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "999999" in err and len(err.strip().splitlines()) == 1


def _torchrun(args: list[str], nproc: int, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(29500 + os.getpid() % 1000 + nproc),
           "-m", "nndist", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path, paper_ckpt):
    """2 gloo ranks give the same result as 1 process: counts exact, arrays identical, moments 1e-6."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    # 90 samples in batches of 16: 6 batches, uneven over 4 ranks, and the last batch is short.
    common = ["gradients", "--model", "paper_cnn", "--weights", str(paper_ckpt), "--data", "shapes", "--samples", "90",
              "--batch-size", "16", "--device", "cpu", "--no-progress", "--no-report"]
    one = _torchrun([*common, "--out", str(tmp_path / "one")], 1, env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun([*common, "--out", str(tmp_path / "two")], 2, env)
    assert two.returncode == 0, two.stderr[-2000:]
    for layer in LAYERS:
        for stat in ("emission", "absorption"):
            a = np.load(tmp_path / "one" / "per_sample" / f"{layer}.{stat}.npy")
            b = np.load(tmp_path / "two" / "per_sample" / f"{layer}.{stat}.npy")
            assert np.array_equal(a, b), (layer, stat)
    sa = pd.read_parquet(tmp_path / "one" / "gradients.parquet")
    sb = pd.read_parquet(tmp_path / "two" / "gradients.parquet")
    exact = ["layer", "channel", "stat", "n", "nonfinite", "min", "max", "q01", "q05", "q25", "q50", "q75", "q95", "q99"]
    pd.testing.assert_frame_equal(sa[exact], sb[exact])
    for col in ("mean", "std", "skew", "kurtosis"):
        np.testing.assert_allclose(sa[col], sb[col], rtol=1e-6, atol=1e-12)
    ma = json.loads((tmp_path / "one" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert ma["sample_order"] == mb["sample_order"]


def test_the_author_codes_way_end_to_end(tmp_path):
    """--layers-like-author --definition author_code --figure author on a random torchvision ResNet-18."""
    from nndist.probes.gradients import layers_like_author

    out = tmp_path / "author"
    assert main(["gradients", "--model", "torchvision:resnet18", "--data", "shapes", "--image-size", "48", "--samples", "6",
                 "--batch-size", "3", "--layers-like-author", "--definition", "author_code", "--figure", "author",
                 "--channels", "4", "--layer-figures", "conv1,layer4.1.conv2", "--device", "cpu", "--out", str(out),
                 "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["layers"]) == layers_like_author(18)
    # the code's Absorption is per output channel
    assert all(info["channels"] == {"emission": info["c_out"], "absorption": info["c_out"]} for info in manifest["layers"].values())
    assert (out / "figures" / "fig4_conv1.png").is_file() and (out / "figures" / "fig4_layer4.1.conv2.png").is_file()
    claims = pd.read_csv(out / "claims.csv")
    c15 = claims[(claims["id"] == 15) & (claims["level"] == "summary")].iloc[0]
    assert c15["verdict"] == "not measured" and "author_code" in c15["numbers"]


def test_an_author_code_run_leaves_the_users_model_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = create_model("cifar_resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_gradients(GradientsConfig(model=model, data="shapes", samples=4, batch_size=2, device="cpu", definition="author_code",
                                  mean=CIFAR10_MEAN, std=CIFAR10_STD), tmp_path / "a", progress=False, report=False)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # running statistics and num_batches_tracked included
