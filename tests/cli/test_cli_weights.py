"""``nndist weights`` on weights files without model code and ``nndist compare``, in-process."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from weights_fixtures import hf_tensors, write_hf_folder, write_planted_pair, write_torchvision_pth

from nndist.cli import main
from nndist.stats.weightstats import weight_table


def test_weights_of_a_sharded_folder_grouped_by_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_hf_folder(tmp_path / "hf")
    out = tmp_path / "t.parquet"
    assert main(["weights", str(folder), "--group", "model.layers.*", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    n = len(hf_tensors())
    assert printed.splitlines()[0].startswith(f"{folder}: {n} tensors in 2 files ({n - 1} summarised)")
    table = pd.read_parquet(out)
    expected = weight_table(folder, group="model.layers.*")
    pd.testing.assert_frame_equal(table, expected)
    assert table["layer"].tolist() == ["lm_head", "model.embed_tokens", "model.layers.0", "model.layers.1",
                                       "model.norm", "model"]  # model.position_ids (int64) is listed
    block = table.set_index("layer").loc["model.layers.1"]
    assert block["dtype"] == "float16,bfloat16" and block["n"] == 16 + 16 * 16 + 8 * 16 + 32 * 16 + 16 * 32
    assert "model.layers.1" in printed and "bfloat16" in printed


def test_weights_per_channel_of_a_torchvision_pth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pth = write_torchvision_pth(tmp_path / "model_best.pth")
    out = tmp_path / "t.csv"
    assert main(["weights", str(pth), "--per-channel", "--out", str(out), "--no-progress"]) == 0
    assert "prefix 'module.' stripped" in capsys.readouterr().out
    table = pd.read_csv(out)
    conv = table[(table["layer"] == "conv1") & (table["param"] == "weight")]
    assert conv["channel"].isna().sum() == 1 and conv["channel"].dropna().tolist() == list(range(8))
    assert (conv.dropna(subset=["channel"])["n"] == 3 * 3 * 3).all()


def test_compare_prints_the_ranked_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, _ = write_planted_pair(tmp_path)
    out = tmp_path / "cmp"
    argv = ["compare", str(a), str(b), "--out", str(out), "--rows", "5", "--top", "2", "--no-progress"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{a}: 14 tensors (13 summarised)") and lines[1].startswith(f"{b}: 14 tensors")
    header, first = lines[2].split(), lines[3].split()
    assert header[:4] == ["tensor", "status", "shape_a", "shape_b"]
    assert first[:5] == ["lm_head.weight", "compared", "50x16", "50x16", "0.5"]
    assert lines[8] == f"... 10 more rows in {out / 'compare.parquet'} (--rows 0 prints all)"
    assert lines[9] == "11 compared, 1 shape mismatch, 1 only in a, 1 only in b, 1 not summarised"
    assert lines[10] == f"wrote {out} (report: {out / 'report.html'})"
    assert (out / "report.html").is_file() and (out / "figures" / "compare_histograms.png").is_file()
    assert main([*argv, "--overwrite", "--no-report", "--rows", "0"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2 + 1 + 15 + 2

    assert main(["report", str(out)]) == 0  # a compare run's report: no claims to test
    assert capsys.readouterr().out.splitlines() == [
        str(out / "report.html"), "the paper's claims apply to reproduce and gradients runs only: none to test here"]
