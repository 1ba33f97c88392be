"""TensorBoard events rebuilt from a run's tables, read back with EventAccumulator."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

import run_fixtures as rf
from nndist.errors import NndistError
from nndist.report.tensorboard import TB_SUFFIX, write_tensorboard

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read(tb):
    acc = event_accumulator.EventAccumulator(
        str(tb), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def rep_run(tmp_path_factory):
    return rf.make_reproduce_run(tmp_path_factory.mktemp("rep"), inits=("orthogonal", "zeros"), seeds=(0, 1),
                                 epochs=3, steps_per_epoch=4, layers=("conv1", "fc1"), figures=False, n_values=80)


def test_reproduce_events(rep_run):
    acc = read(write_tensorboard(rep_run))
    tags = acc.Tags()
    scalars = set(tags["scalars"])
    for init in ("orthogonal", "zeros"):
        for s in (0, 1):
            assert f"loss/{init}/seed{s}" in scalars
            assert f"accuracy/train/{init}/seed{s}" in scalars and f"accuracy/valid/{init}/seed{s}" in scalars
    assert len(acc.Scalars("loss/orthogonal/seed0")) == 12  # one per optimisation step
    assert [e.step for e in acc.Scalars("accuracy/valid/orthogonal/seed1")] == [0, 1, 2, 3]
    hists = set(tags["histograms"])
    # 2 inits x 2 seeds x 2 layers x (2 params + 3 inputs)
    assert len(hists) == 40
    tag = "weights/orthogonal/seed0/conv1/weight"
    events = acc.Histograms(tag)
    assert [e.step for e in events] == [0, 1, 2, 3]  # before, epoch_1, epoch_2, after (= last epoch)
    w = pd.read_parquet(rep_run / "weights.parquet")
    row = w[(w.init == "orthogonal") & (w.seed == 0) & (w.layer == "conv1") & (w.param == "weight")
            & (w.stage == "after")].iloc[0]
    h = events[-1].histogram_value
    assert h.num == row["n"] and sum(h.bucket) == row["n"]
    assert h.sum == pytest.approx(row["n"] * row["mean"], abs=1e-9)
    assert h.sum_squares == pytest.approx(row["n"] * (row["std"] ** 2 + row["mean"] ** 2), rel=1e-9)
    assert (h.min, h.max) == (pytest.approx(row["min"]), pytest.approx(row["max"]))
    assert "features/zeros/seed1/fc1/random" in hists


def test_rewrite_replaces_previous_events(rep_run):
    write_tensorboard(rep_run)
    write_tensorboard(rep_run)
    assert len(list((rep_run / "tb").glob(f"*{TB_SUFFIX}"))) == 1
    assert not [p for p in (rep_run / "tb").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("per_sample", [True, False])
def test_gradients_events(tmp_path, per_sample):
    run = rf.make_gradients_run(tmp_path, layers={"a.conv": (6, 4)}, n_samples=50, per_sample=per_sample,
                                figures=False)
    acc = read(write_tensorboard(run))
    assert sorted(acc.Tags()["histograms"]) == ["absorption/a.conv", "emission/a.conv"]
    em = acc.Histograms("emission/a.conv")
    assert [e.step for e in em] == list(range(6))  # one distribution per channel
    assert len(acc.Histograms("absorption/a.conv")) == 4
    g = pd.read_parquet(run / "gradients.parquet")
    rec = g[(g.stat == "emission") & (g.channel == 2)].iloc[0]
    h = em[2].histogram_value
    assert h.num == 50 and sum(h.bucket) == pytest.approx(50)
    assert h.sum == pytest.approx(rec["n"] * rec["mean"], rel=1e-5)
    if per_sample:
        x = np.load(run / "per_sample" / "a.conv.emission.npy")[:, 2].astype(np.float64)
        assert h.sum_squares == pytest.approx((x * x).sum(), rel=1e-9)


def test_missing_tensorboard(rep_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(NndistError, match=r"pip install 'nndist\[tb\]'"):
        write_tensorboard(rep_run)
