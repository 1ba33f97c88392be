"""The evaluate and weights sub-commands, in-process."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from nndist.cli import main
from nndist.models import MODELS, create_model, save_checkpoint


def test_evaluate_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", "paper_cnn", "--data", "shapes", "--samples", "200", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("top1=") and "n=200" in out


def test_evaluate_checkpoint_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_checkpoint(tmp_path / "after.safetensors", create_model("paper_cnn"), {"model": "paper_cnn"})
    assert main(["evaluate", "--model", str(path), "--data", "shapes", "--samples", "50", "--no-progress"]) == 0
    assert "n=50" in capsys.readouterr().out
    assert main(["evaluate", "--model", "paper_cnn", "--weights", str(path), "--data", "shapes",
                 "--samples", "50", "--no-progress"]) == 0


def test_weights_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "paper_cnn"]) == 0
    out = capsys.readouterr().out
    assert "535,018 parameters" in out
    for layer in ("conv1", "conv2", "conv3", "fc1", "fc2"):
        assert layer in out
    csv = tmp_path / "w.csv"
    assert main(["weights", "paper_cnn", "--init", "orthogonal", "--out", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert len(table) == 10 and {"layer", "param", "shape", "n", "mean", "std", "q50", "kurtosis"} <= set(table.columns)
    assert table.loc[table.layer == "fc1"].iloc[0]["n"] == 1024 * 512


def test_weights_checkpoint_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = create_model("cifar_resnet20")
    sd = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": sd, "best_prec1": 0.0}, tmp_path / "r.th")
    out = tmp_path / "r.parquet"
    assert main(["weights", str(tmp_path / "r.th"), "--out", str(out), "--no-progress"]) == 0
    # No model code: every tensor of the file, BatchNorm statistics included, names unprefixed.
    assert f"{len(sd)} tensors ({len(sd)} summarised)" in capsys.readouterr().out
    table = pd.read_parquet(out)
    assert len(table) == len(sd) and (table["layer"] + "." + table["param"]).tolist() == [k[len("module."):] for k in sd]


@pytest.mark.parametrize("argv", [
    ["weights", "resnet9000"],
    ["evaluate", "--model", "resnet9000", "--data", "shapes"],
])
def test_bad_model_name(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "resnet9000" in err
    for name in MODELS.names():
        assert name in err


def test_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", "paper_cnn", "--data", str(tmp_path / "none")]) == 2
    assert "--data PATH" in capsys.readouterr().err


@pytest.mark.data
@pytest.mark.slow
def test_evaluate_resnet20_cli(cifar_dir: Path, models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NNDIST_CACHE", str(tmp_path))
    argv = ["evaluate", "--model", "cifar_resnet20", "--weights", str(models_dir / "resnet20-12fca82f.th"),
            "--data", str(cifar_dir), "--samples", "2000", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    top1 = float(out.split("top1=")[1].split("%")[0])
    assert "n=2000" in out and 75.0 < top1 < 87.0
