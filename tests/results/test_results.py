"""The results layer: layout names, the writer's row order and checks, the reader's answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nndist.errors import NndistError
from nndist.results import RunWriter, layout, load_run
from nndist.results.schema import TABLES, columns
from nndist.stats import SUMMARY_COLUMNS


@pytest.mark.parametrize("init,seed", [("orthogonal", 0), ("kaiming_normal", 3), ("a-seed-like-name", 0), ("x-seed2", 11)])
def test_run_key_round_trips(init, seed):
    key = layout.run_key(init, seed)
    assert layout.parse_run_key(key) == (init, seed)
    assert (key == init) == (seed == 0)


def test_stages_and_files():
    assert [layout.stage_epoch(s, 9) for s in ("before", "epoch_3", "after", "other")] == [0, 3, 9, None]
    stages = ["after", "epoch_10", "before", "epoch_2"]
    assert sorted(stages, key=layout.stage_order) == ["before", "epoch_2", "epoch_10", "after"]
    assert layout.epoch_stage(4) == "epoch_4" and layout.stage_epoch(layout.epoch_stage(4), 9) == 4
    assert layout.layer_file_stem("") == "model" and layout.layer_file_stem("a/b.c") == "a_b.c"
    assert layout.per_sample_file("", "emission") == "per_sample/model.emission.npy"
    assert layout.figure_file("fig4", "layer1.0.conv1") == "figures/fig4_layer1.0.conv1.png"
    assert layout.checkpoint_file(layout.run_key("zeros", 2), "after") == "checkpoints/zeros-seed2/after.safetensors"
    assert columns("reproduce", "weights")[-len(SUMMARY_COLUMNS):] == list(SUMMARY_COLUMNS)


def _loss_rows() -> pd.DataFrame:
    rows = [("b", 0, 1, step, 1.0 + step) for step in range(3)] + [("a", 0, 1, step, 2.0 + step) for step in range(3)]
    return pd.DataFrame(rows, columns=columns("reproduce", "loss"))


def test_writer_orders_rows_by_step_then_run_order(tmp_path):
    writer = RunWriter(tmp_path / "run", layout.REPRODUCE)
    writer.prepare(overwrite=False, resume=False)
    writer.write_manifest({"runs": {}})
    writer.write_table("loss", _loss_rows(), {("a", 0): 0, ("b", 0): 1})
    df = pd.read_parquet(tmp_path / "run" / "loss.parquet")
    assert list(zip(df["step"], df["init"])) == [(0, "a"), (0, "b"), (1, "a"), (1, "b"), (2, "a"), (2, "b")]
    with pytest.raises(ValueError, match="lacks the column"):
        writer.write_table("loss", _loss_rows().drop(columns=["epoch"]))
    assert load_run(tmp_path / "run").kind == layout.REPRODUCE


def test_prepare_refuses_and_explains(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    writer = RunWriter(out, layout.GRADIENTS)
    with pytest.raises(NndistError, match="not empty"):
        writer.prepare(overwrite=False, resume=False)
    with pytest.raises(NndistError, match="manifest.json"):
        writer.prepare(overwrite=False, resume=True)
    RunWriter(out, layout.REPRODUCE).write_manifest({})
    with pytest.raises(NndistError, match="not a gradients run"):
        writer.prepare(overwrite=False, resume=True)
    assert (out / "keep.txt").read_text() == "x"


def test_final_losses_is_the_mean_of_each_runs_last_epoch(tmp_path):
    writer = RunWriter(tmp_path, layout.REPRODUCE)
    rows = [("a", 0, e, 3 * (e - 1) + k, float(10 * e + k)) for e in (1, 2) for k in range(3)]
    rows += [("d", 1, 1, 0, 5.0), ("d", 1, 1, 1, math.nan)]  # diverged in epoch 1, no epoch 2 rows
    writer.write_table("loss", pd.DataFrame(rows, columns=columns("reproduce", "loss")))
    writer.write_manifest({"runs": {layout.run_key("a", 0): {"init": "a", "seed": 0, "status": "done"},
                                    layout.run_key("d", 1): {"init": "d", "seed": 1, "status": "diverged"}}})
    finals = load_run(tmp_path).final_losses().set_index(["init", "seed"])
    assert finals.loc[("a", 0), "final_loss"] == pytest.approx(21.0) and finals.loc[("a", 0), "epochs"] == 2
    assert math.isinf(finals.loc[("d", 1), "final_loss"]) and finals.loc[("d", 1), "status"] == "diverged"


def test_per_sample_arrays_are_published_under_the_layout_name(tmp_path):
    writer = RunWriter(tmp_path, layout.GRADIENTS)
    writer.write_manifest({"layers": {"": {}}})
    arr = writer.per_sample_array("", "emission", (4, 3), create=True)
    arr[:] = np.arange(12, dtype=np.float32).reshape(4, 3)
    arr.flush()
    run = load_run(tmp_path)
    assert run.per_sample("", "emission") is None  # not published yet
    writer.publish_per_sample("", "emission")
    assert np.array_equal(run.per_sample("", "emission"), np.arange(12).reshape(4, 3))


def test_every_table_has_keys():
    for kind, tables in TABLES.items():
        for name, spec in tables.items():
            assert spec.keys and set(spec.keys).isdisjoint(spec.values), (kind, name)
