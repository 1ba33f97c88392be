"""Tables in part files: one per step, replaced on replay, compacted, exploded, and recovered after a kill."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from nndist.results import RunDir, layout
from nndist.results.parts import PartTables
from nndist.stats import SUMMARY_COLUMNS

NAMES = ("weights", "histograms")


def _weights(parts: PartTables, step: int, layers: list[str], value: float = 1.0):
    cols = {c: [] for c in parts.schemas["weights"].names}
    for layer in layers:
        for ch in (None, 0, 1):
            cols["step"].append(step)
            cols["layer"].append(layer)
            cols["param"].append("weight")
            cols["channel"].append(ch)
            for name in SUMMARY_COLUMNS:
                cols[name].append(3 if name in ("n", "nonfinite") else value)
    return parts.arrow("weights", cols)


def _hist(parts: PartTables, step: int):
    return parts.arrow("histograms", {"table": ["weights"], "step": [step], "layer": ["a"], "param": [None],
                                      "left": [0.5], "right": [1.0], "count": [4]})


def _run(tmp_path) -> PartTables:  # noqa: ANN001
    path = tmp_path / "run"
    path.mkdir()
    (path / layout.MANIFEST).write_text('{"kind": "monitor"}')
    return PartTables(path, layout.MONITOR, NAMES)


def test_parts_read_as_one_table_and_a_replay_replaces_its_step(tmp_path) -> None:  # noqa: ANN001
    parts = _run(tmp_path)
    for step in (0, 10, 20):
        parts.write_step(step, {"weights": _weights(parts, step, ["a", "b"]), "histograms": _hist(parts, step)})
    parts.write_step(10, {"weights": _weights(parts, 10, ["a"], value=7.0)})  # replayed: fewer rows, no histogram
    df = pd.read_parquet(parts.path / "weights.parquet")
    assert df.groupby("step").size().to_dict() == {0: 6, 10: 3, 20: 6}
    assert (df[df["step"] == 10]["mean"] == 7.0).all()
    assert sorted(pd.read_parquet(parts.path / "histograms.parquet")["step"]) == [0, 20]
    assert df["channel"].isna().sum() == 5 and str(df["n"].dtype) == "int64"
    assert parts.steps("weights") == [0, 10, 20] and parts.recorded_steps() == [0, 10, 20]
    # the one reader reads the folder; a temporary file beside the parts is not read
    (parts.path / "weights.parquet" / f".part-x{'.tmp-'}junk").write_bytes(b"not parquet")
    run = RunDir(parts.path, {"kind": "monitor"})
    assert len(run.table("weights")) == 15


def test_compact_then_explode_round_trip(tmp_path) -> None:  # noqa: ANN001
    parts = _run(tmp_path)
    for step in (5, 0, 3):
        parts.write_step(step, {"weights": _weights(parts, step, ["a"]), "histograms": _hist(parts, step)})
    before = pd.read_parquet(parts.path / "weights.parquet").sort_values(["step", "channel"], na_position="first")
    parts.compact()
    assert (parts.path / "weights.parquet").is_file()
    compacted = pd.read_parquet(parts.path / "weights.parquet")
    assert list(compacted["step"]) == sorted(compacted["step"])  # step order
    pd.testing.assert_frame_equal(compacted.reset_index(drop=True), before.reset_index(drop=True))
    parts.explode()
    assert parts.steps("weights") == [0, 3, 5]
    pd.testing.assert_frame_equal(pd.read_parquet(parts.path / "weights.parquet").reset_index(drop=True),
                                  before.reset_index(drop=True))
    assert sorted(p.name for p in parts.path.iterdir()) == ["histograms.parquet", "manifest.json", "weights.parquet"]


@pytest.mark.parametrize("moment", ["after_write", "after_first_rename", "after_second_rename"])
def test_recover_an_interrupted_compaction(tmp_path, monkeypatch, moment: str) -> None:  # noqa: ANN001
    parts = _run(tmp_path)
    for step in (0, 1):
        parts.write_step(step, {"weights": _weights(parts, step, ["a"])})
    expected = pd.read_parquet(parts.path / "weights.parquet").reset_index(drop=True)
    calls = {"n": 0}
    real = os.replace

    def dying_replace(src, dst):  # noqa: ANN001
        calls["n"] += 1
        stop = {"after_write": 2, "after_first_rename": 3, "after_second_rename": 99}[moment]
        if calls["n"] >= stop:  # 1: atomic_path's own rename of the compacted file
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    if moment == "after_second_rename":  # the old parts are removed last: simulate a kill before
        monkeypatch.setattr("shutil.rmtree", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):
        parts.compact()
    monkeypatch.undo()
    PartTables(parts.path, layout.MONITOR, NAMES).recover()
    got = pd.read_parquet(parts.path / "weights.parquet").reset_index(drop=True)
    pd.testing.assert_frame_equal(got.sort_values(["step", "channel"], na_position="first").reset_index(drop=True),
                                  expected.sort_values(["step", "channel"], na_position="first").reset_index(drop=True))
    assert [p.name for p in parts.path.iterdir() if p.name.startswith(".")] == []


def test_an_empty_parts_folder_reads_as_missing(tmp_path) -> None:  # noqa: ANN001
    parts = _run(tmp_path)
    (parts.path / "weights.parquet").mkdir()
    assert RunDir(parts.path, {"kind": "monitor"}).table("weights") is None
