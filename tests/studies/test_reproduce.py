"""End-to-end tests of the initialisation study (``nndist reproduce``)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from nndist.cli import main
from nndist.errors import NndistError
from nndist.inits import PAPER_INITS, init_model
from nndist.models import create_model
from nndist.studies import ReproduceConfig, run_reproduce
from nndist.studies.training import RunSet, run_adam

RUN_FILES = [
    "manifest.json",
    "loss.parquet",
    "accuracy.parquet",
    "weights.parquet",
    "features.parquet",
    "histograms.parquet",
    "shifts.parquet",
    "figures/fig1_loss.png",
    "figures/fig1_loss.svg",
    "figures/fig2_weights.png",
    "figures/fig2_weights.svg",
    "figures/fig3_features.png",
    "figures/fig3_features.svg",
    "report.html",
    "claims.csv",
]


def tiny(**kw) -> ReproduceConfig:
    base = dict(data="shapes", epochs=1, train_samples=320, valid_samples=100, batch_size=64, device="cpu", eval_batch_size=200)
    base.update(kw)
    return ReproduceConfig(**base)


def check_run_dir(run, inits, layers=("conv1", "conv2", "conv3", "fc1"), inputs=("train", "valid", "random")):
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["kind"] == "reproduce" and manifest["finished"]
    assert set(manifest["runs"]) == set(inits)
    weights = pd.read_parquet(run / "weights.parquet")
    features = pd.read_parquet(run / "features.parquet")
    assert set(weights["stage"]) >= {"before", "after"}
    assert set(features["input"]) == set(inputs)
    assert len(features[features["stage"] == "after"]) == len(inits) * len(layers) * len(inputs)
    # The tables agree with the checkpoints.
    for init in inits:
        for stage in ("before", "after"):
            sd = load_file(run / "checkpoints" / init / f"{stage}.safetensors")
            for layer in layers:
                for param in ("weight", "bias"):
                    t = sd[f"{layer}.{param}"].double()
                    row = weights[(weights.init == init) & (weights.layer == layer) & (weights.param == param) & (weights.stage == stage)]
                    assert len(row) == 1
                    assert row["n"].iloc[0] == t.numel()
                    assert row["std"].iloc[0] == pytest.approx(t.std(unbiased=False).item(), rel=1e-9, abs=1e-12)
                    assert row["mean"].iloc[0] == pytest.approx(t.mean().item(), rel=1e-9, abs=1e-12)
                    assert row["max"].iloc[0] == pytest.approx(t.max().item(), rel=1e-12, abs=0)
    # Feature n counts every element of the layer's output for every selected image.
    n_valid = len(manifest["subsets"]["valid"])
    row = features[(features.layer == "conv1") & (features.input == "valid") & (features.stage == "after")].iloc[0]
    assert row["n"] + row["nonfinite"] == n_valid * 16 * 32 * 32
    return manifest, weights, features


@pytest.mark.slow
def test_reproduce_shapes_end_to_end(tmp_path):
    inits = list(PAPER_INITS)
    run = run_reproduce(tiny(inits=tuple(inits)), tmp_path / "run", progress=False)
    manifest, weights, features = check_run_dir(run, inits)
    loss = pd.read_parquet(run / "loss.parquet")
    assert len(loss) == len(inits) * 5  # 320 images / batch 64 = 5 steps
    # Zeros: no dynamics. Loss is exactly ln(10) at the first step; every weight stays zero but fc2's bias.
    z = loss[loss.init == "zeros"].sort_values("step")
    assert z["loss"].iloc[0] == pytest.approx(math.log(10), rel=1e-6)
    sd = load_file(run / "checkpoints" / "zeros" / "after.safetensors")
    for key, t in sd.items():
        if key == "fc2.bias":
            assert t.abs().sum() > 0
        else:
            assert torch.count_nonzero(t) == 0, key
    acc = pd.read_parquet(run / "accuracy.parquet")
    assert set(acc["split"]) == {"train", "valid"} and set(acc["epoch"]) == {0, 1}
    hist = pd.read_parquet(run / "histograms.parquet")
    # Histogram counts add up to the summary's n for every tensor.
    h = hist[(hist.table == "weights") & (hist.init == "orthogonal") & (hist.layer == "fc1") & (hist.param == "weight") & (hist.stage == "after")]
    assert h["count"].sum() == 1024 * 512
    shifts = pd.read_parquet(run / "shifts.parquet")
    zero_shift = shifts[(shifts.init == "zeros") & (shifts.table == "weights") & (shifts.layer == "conv1")]
    assert (zero_shift["wasserstein"] == 0).all()
    moved = shifts[(shifts.init == "orthogonal") & (shifts.table == "weights") & (shifts.layer == "fc1") & (shifts.param == "weight")]
    assert (moved["wasserstein"] > 0).all()


def test_reproduce_real_cifar_subset(tmp_path, cifar_dir):
    inits = ["orthogonal", "kaiming_normal"]
    cfg = tiny(data=str(cifar_dir), inits=tuple(inits), train_samples=400, valid_samples=200, every_epoch=True, epochs=2)
    run = run_reproduce(cfg, tmp_path / "run", progress=False)
    manifest, weights, _ = check_run_dir(run, inits)
    assert len(manifest["subsets"]["train"]) == 400
    # Class-stratified: 40 images of each CIFAR-10 class.
    from nndist.data import load_split

    labels = load_split(str(cifar_dir), "train", progress=False).labels
    counts = np.bincount(labels[manifest["subsets"]["train"]].numpy(), minlength=10)
    assert (counts == 40).all()
    assert "epoch_1" in set(weights["stage"])
    assert (run / "figures" / "evolution.png").is_file()


def _models(inits, seed=1):
    out = []
    for s in inits:
        m = create_model("paper_cnn")
        init_model(m, s, generator=seed)
        out.append(m)
    return out


def test_runs_trained_together_equal_training_alone():
    """All inits trained together equal each trained alone (bit for bit: no op mixes runs)."""
    torch.manual_seed(0)
    inits = ["orthogonal", "kaiming_uniform", "xavier_normal"]
    models = _models(inits)
    alone = [copy.deepcopy(m) for m in models]
    runs = RunSet(models)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    loss, _ = runs.losses(x, y)
    loss.sum().backward()
    for r, m in enumerate(alone):
        F.cross_entropy(m(x), y).backward()
        assert loss[r].item() == pytest.approx(F.cross_entropy(m(x), y).item(), rel=1e-5)
        trained = dict(runs.models[r].named_parameters())
        for name, p in m.named_parameters():
            torch.testing.assert_close(trained[name].grad, p.grad, rtol=1e-4, atol=1e-6)


def test_zeros_init_has_no_dynamics():
    """Under zeros only fc2's bias has a non-zero gradient, so everything else stays exactly zero."""
    runs = RunSet(_models(["zeros"]))
    opt = torch.optim.Adam(runs.parameters(), lr=1e-4)
    for _ in range(5):
        opt.zero_grad()
        loss, _ = runs.losses(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
        loss.sum().backward()
        opt.step()
    for name, p in runs.models[0].named_parameters():
        if name == "fc2.bias":
            assert torch.count_nonzero(p) > 0
        else:
            assert torch.count_nonzero(p) == 0, name


def test_diverged_init_is_recorded_and_others_go_on(tmp_path):
    # A gain of 1e30 makes kaiming_normal overflow at once; zeros ignores the gain and trains on.
    cfg = tiny(inits=("kaiming_normal", "zeros"), gain=1e30)
    run = run_reproduce(cfg, tmp_path / "run", progress=False)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["runs"]["kaiming_normal"]["status"] == "diverged"
    assert manifest["runs"]["kaiming_normal"]["diverged_at_step"] == 0
    assert manifest["runs"]["zeros"]["status"] == "done"
    loss = pd.read_parquet(run / "loss.parquet")
    assert len(loss[loss.init == "zeros"]) == 5 and len(loss[loss.init == "kaiming_normal"]) == 1


def test_one_run_diverging_leaves_others_training(tmp_path, monkeypatch):
    """A non-finite loss in one run freezes that run only."""
    models = _models(["orthogonal", "xavier_uniform"])
    with torch.no_grad():
        models[0].fc2.bias.fill_(float("nan"))
    runs = RunSet(models)
    opt = run_adam(runs, lr=1e-3)
    before = [m.conv1.weight.detach().clone() for m in runs.models]
    loss, _, newly = runs.step(opt, torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    assert not torch.isfinite(loss[0]) and torch.isfinite(loss[1]) and newly == [0]
    assert torch.equal(runs.models[0].conv1.weight, before[0])
    assert not torch.equal(runs.models[1].conv1.weight, before[1])
    assert torch.isfinite(runs.models[1].conv1.weight).all()


def _as_legacy(state_file, version):
    """Rewrites a training state in an earlier format: stacked parameters and Adam state, summaries
    as state dicts, and the tables as encoded chunks (version 3) or as rows (version 2)."""
    from nndist.results.state import decode_chunks, to_saveable
    from nndist.stats import unpack
    from nndist.studies.init_study import TABLES

    state = torch.load(state_file, weights_only=True)
    assert state["version"] == 4
    for rank in state["ranks"]:
        models = rank["runs"]["models"]
        rank["runs"] = {"params": {k: torch.stack([m[k] for m in models]) for k in models[0]}, "buffers": {},
                        "frozen": rank["runs"]["frozen"], "frozen_values": {}}
        k = len(models[0])
        opt = rank["optimizer"]
        rank["optimizer"] = {
            "state": {i: {"step": opt["state"][i]["step"],
                          **{n: torch.stack([opt["state"][r * k + i][n] for r in range(len(models))]) for n in ("exp_avg", "exp_avg_sq")}}
                      for i in range(k) if i in opt["state"]},
            "param_groups": [dict(opt["param_groups"][0], params=list(range(k)))],
        }
        rank["before"] = [[key, to_saveable(unpack(packed)[0].state_dict())] for key, packed in rank["before"]]
        if version == 2:
            rank["tables"] = to_saveable({name: decode_chunks(rank["tables"][name], "reproduce", name).to_dict("records") for name in TABLES})
    state["version"] = version
    torch.save(state, state_file)


@pytest.mark.parametrize("legacy_state", [None, 3, 2], ids=["state-v4", "state-v3", "state-v2"])
def test_resume_after_interruption_equals_uninterrupted(tmp_path, monkeypatch, legacy_state):
    cfg = tiny(inits=("orthogonal", "xavier_uniform"), epochs=2, checkpoint_every=3)
    ref = run_reproduce(cfg, tmp_path / "ref", progress=False, report=False)

    calls = {"n": 0}
    original = RunSet.step

    def interrupt(self, *args):
        calls["n"] += 1
        if calls["n"] == 7:  # mid-epoch 2, after the step-6 checkpoint
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(RunSet, "step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_reproduce(cfg, tmp_path / "res", progress=False, report=False)
    monkeypatch.setattr(RunSet, "step", original)
    if legacy_state:
        _as_legacy(tmp_path / "res" / "state" / "train.pt", legacy_state)
    res = run_reproduce(cfg, tmp_path / "res", resume=True, progress=False, report=False)
    for init in ("orthogonal", "xavier_uniform"):
        a = load_file(ref / "checkpoints" / init / "after.safetensors")
        b = load_file(res / "checkpoints" / init / "after.safetensors")
        for k in a:
            assert torch.equal(a[k], b[k]), k
    for table in ("loss", "accuracy", "weights", "features", "histograms", "shifts"):
        pd.testing.assert_frame_equal(pd.read_parquet(ref / f"{table}.parquet"), pd.read_parquet(res / f"{table}.parquet"))


def test_output_dir_not_empty_needs_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(NndistError, match="not empty"):
        run_reproduce(tiny(inits=("zeros",)), out, progress=False)
    assert (out / "precious.txt").read_text() == "keep me"


def test_bad_config_values_are_named():
    with pytest.raises(NndistError, match="profile"):
        ReproduceConfig(profile="huge").resolve()
    with pytest.raises(NndistError, match="--epochs"):
        ReproduceConfig(epochs=-1).resolve()
    with pytest.raises(NndistError, match="--train-samples"):
        ReproduceConfig(train_samples=0).resolve()


def test_unknown_layer_and_init_listed(tmp_path):
    with pytest.raises(NndistError, match="conv9.*conv1"):
        run_reproduce(tiny(inits=("zeros",), layers=("conv9",)), tmp_path / "a", progress=False)
    with pytest.raises(NndistError, match="orthogonal"):
        run_reproduce(tiny(inits=("sideways",)), tmp_path / "b", progress=False)


def test_cli_reproduce_in_process(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["reproduce", "--data", "shapes", "--inits", "orthogonal,zeros", "--epochs", "1", "--train-samples", "128",
                 "--valid-samples", "50", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "orthogonal" in printed and "final train loss" in printed
    assert (out / "report.html").is_file()
    code = main(["reproduce", "--data", "shapes", "--inits", "orthogonal", "--out", str(out), "--no-progress"])
    assert code == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path):
    """Inits spread over 2 gloo ranks give the same run directory as 1 process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    common = ["reproduce", "--data", "shapes", "--inits", "orthogonal,zeros,xavier_uniform", "--epochs", "1",
              "--train-samples", "128", "--valid-samples", "40", "--device", "cpu", "--no-progress", "--no-report"]

    def torchrun(nproc: int, out: Path) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(28500 + os.getpid() % 1000 + nproc), "-m", "nndist", *common, "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    torchrun(1, tmp_path / "one")
    torchrun(2, tmp_path / "two")
    for table in ("loss", "accuracy", "weights", "features", "histograms", "shifts"):
        a = pd.read_parquet(tmp_path / "one" / f"{table}.parquet")
        b = pd.read_parquet(tmp_path / "two" / f"{table}.parquet")
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6)
        if table == "histograms":
            pd.testing.assert_frame_equal(a, b)  # counts and edges exactly
    for init in ("orthogonal", "zeros", "xavier_uniform"):
        a = load_file(tmp_path / "one" / "checkpoints" / init / "after.safetensors")
        b = load_file(tmp_path / "two" / "checkpoints" / init / "after.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((tmp_path / "one" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert ma["runs"] == mb["runs"] and ma["subsets"] == mb["subsets"]


def test_a_run_without_training_steps_says_so_on_figure_1(tmp_path):
    """Zero epochs leave the loss table empty: Figure 1 is drawn with a note, not a warning."""
    run = run_reproduce(tiny(inits=("zeros",), epochs=0), tmp_path / "run", progress=False)
    assert pd.read_parquet(run / "loss.parquet").empty
    svg = (run / "figures" / "fig1_loss.svg").read_text()
    assert "no training loss recorded yet" in svg
    assert (run / "report.html").is_file()
