"""The report's explorer data, built from run directories written by the project's own writer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from weights_fixtures import write_planted_pair

import nndist
import run_fixtures as rf
from nndist.report import explorer, write_report
from nndist.report.explorer import MAX_STEPS, embedded_json, explorer_data
from nndist.results import load_run
from nndist.studies.compare import run_compare

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))
from monitor_cases import data, tiny, train  # noqa: E402


def _centres(item: dict) -> tuple[np.ndarray, float]:
    lo, hi, bins = item["grid"]
    w = (hi - lo) / bins
    return lo + (np.arange(bins) + 0.5) * w, w


def _mass(density: list) -> float:
    return float(np.sum(np.asarray(density, dtype=float)))


@pytest.fixture(scope="module")
def rep_run(tmp_path_factory):
    return rf.make_reproduce_run(tmp_path_factory.mktemp("rep"), inits=("orthogonal", "xavier_uniform", "zeros"),
                                 seeds=(0, 1), diverged=("xavier_uniform",), epochs=3, n_values=400)


def test_reproduce_items_are_every_distribution_against_before(rep_run):
    run = load_run(rep_run)
    data = explorer_data(run)
    assert [s["key"] for s in data["selectors"]] == ["run", "table", "layer", "what", "stage"]
    w, f = run.table("weights"), run.table("features")
    expected = 0
    for df, what in ((w, "param"), (f, "input")):
        for _, g in df.groupby(["init", "seed", "layer", what]):
            expected += max(1, g["stage"].nunique() - 1)  # a diverged run has only 'before'
    assert len(data["items"]) == expected
    by_keys = {tuple(i["keys"].values()): i for i in data["items"]}
    item = by_keys[("orthogonal (seed 1)", "weights", "conv2", "weight", "after")]
    assert [s["name"] for s in item["series"]] == ["before", "after"]
    lo, hi, bins = item["grid"]
    for s in item["series"]:  # densities on the grid integrate to 1 (4 significant digits each)
        assert _mass(s["density"]) * (hi - lo) / bins == pytest.approx(1.0, abs=2e-3)
    row = w[(w.init == "orthogonal") & (w.seed == 1) & (w.layer == "conv2") & (w.param == "weight") & (w.stage == "after")]
    stats = dict(zip(item["stats"]["columns"], item["stats"]["rows"][1][1:]))
    for col in ("n", "mean", "std", "kurtosis", "q50"):
        assert stats[col] == pytest.approx(float(row[col].iloc[0]), rel=1e-3)
    shifts = run.table("shifts")
    shift = shifts[(shifts.init == "orthogonal") & (shifts.seed == 1) & (shifts.layer == "conv2") & (shifts.param == "weight")]
    assert dict(item["numbers"])["W1 before → after"] == pytest.approx(float(shift["wasserstein"].iloc[0]), rel=1e-3)
    # the densities' mean is the summary's mean to within a bin (mass moves to bin centres)
    centres, width = _centres(item)
    d = np.asarray(item["series"][1]["density"], dtype=float)
    assert abs(float((centres * d).sum() / d.sum()) - stats["mean"]) < width
    diverged = by_keys[("xavier_uniform (seed 0)", "features", "conv1", "train", "before")]
    assert [s["name"] for s in diverged["series"]] == ["before"]
    epoch = by_keys[("orthogonal (seed 0)", "features", "fc1", "valid", "epoch_2")]
    assert [s["name"] for s in epoch["series"]] == ["before", "epoch_2"] and epoch["numbers"] == []


@pytest.fixture(scope="module")
def grad_run(tmp_path_factory):
    return rf.make_gradients_run(tmp_path_factory.mktemp("grad"), layers={"a.conv": (16, 8), "b.fc": (4, 20)},
                                 n_samples=120, figures=False)


def test_gradients_boxes_come_from_the_streamed_quantiles(grad_run):
    run = load_run(grad_run)
    data = explorer_data(run)
    g = run.table("gradients")
    for layer in ("a.conv", "b.fc"):
        for stat in ("emission", "absorption"):
            sub = g[(g.layer == layer) & (g.stat == stat)].sort_values("channel")
            box = data["boxes"][layer][stat]
            assert box["channel"] == sub["channel"].tolist()
            np.testing.assert_allclose(box["q50"], sub["q50"], rtol=1e-3)
            np.testing.assert_allclose(box["q95"], sub["q95"], rtol=1e-3)


def test_gradients_histograms_come_from_the_per_sample_arrays(grad_run):
    run = load_run(grad_run)
    data = explorer_data(run)
    views = [i["keys"]["channel"] for i in data["items"] if i["keys"]["layer"] == "a.conv"]
    assert views == ["all channels"] + [f"channel {c}" for c in range(15)]  # Figure 4's first 15
    fc = [i for i in data["items"] if i["keys"]["layer"] == "b.fc"]
    assert len(fc) == 1 + 15  # absorption has 20 channels, emission 4
    ch7 = next(i for i in fc if i["keys"]["channel"] == "channel 7")
    assert [s["name"] for s in ch7["series"]] == ["Absorption (in channel 7)"]  # no emitting channel 7
    pooled = next(i for i in data["items"] if i["keys"] == {"layer": "a.conv", "channel": "all channels"})
    em = run.per_sample("a.conv", "emission")
    stats = dict(zip(pooled["stats"]["columns"], pooled["stats"]["rows"][0][1:]))
    assert stats["n"] == em.size and stats["std"] == pytest.approx(float(em.astype(np.float64).std()), rel=1e-3)
    lo, hi, bins = pooled["grid"]
    edges = np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(np.clip(em.astype(np.float64), lo, hi), bins=edges)
    np.testing.assert_allclose(pooled["series"][0]["density"], counts / (counts.sum() * np.diff(edges)), rtol=1e-3)


def test_gradients_without_per_sample_arrays_keep_the_boxes(tmp_path):
    run = load_run(rf.make_gradients_run(tmp_path, n_samples=40, per_sample=False, figures=False))
    data = explorer_data(run)
    assert data["items"] == [] and set(data["boxes"]) == {"layer1.0.conv1", "layer2.0.conv1"}
    assert any("--no-per-sample" in n for n in data["notes"])


def test_compare_opens_on_the_most_changed_tensor(tmp_path):
    a, b, tensors = write_planted_pair(tmp_path)
    run = load_run(run_compare([str(a), str(b)], tmp_path / "cmp", progress=False, report=False))
    data = explorer_data(run)
    assert data["initial"] == {"layer": "lm_head", "tensor": "weight"}
    assert len(data["items"]) == len(run.table("compare"))
    by = {(i["keys"]["layer"], i["keys"]["tensor"]): i for i in data["items"]}
    top = by[("lm_head", "weight")]
    assert [s["name"] for s in top["series"]] == ["A", "B"]
    numbers = dict(top["numbers"])
    assert (numbers["A"], numbers["B"], numbers["relative change"]) == (str(a), str(b), 0.5)
    stats = top["stats"]["rows"]
    assert stats[0][1] == stats[1][1] == 50 * 16  # counts stay exact
    assert stats[1][3] == pytest.approx(1.5 * stats[0][3], rel=1e-3)  # std of B
    assert [s["name"] for s in by[("model.norm", "weight")]["series"]] == ["A"]  # only in A
    assert by[("model", "position_ids")]["series"] == []  # an integer tensor: listed, no histogram


def _monitor_run(root, steps: int = 30):
    """A monitor run written by nndist.Monitor: every step of ``steps`` recorded, per channel too."""
    model = tiny()
    with nndist.Monitor(model, root, every=1, per_channel=True) as mon:
        train(model, data(steps), lambda i: mon.step())
    return load_run(root)


def test_monitor_steps_are_thinned_first_and_last_kept(tmp_path):
    run = _monitor_run(tmp_path / "run")
    data_ = explorer_data(run)
    assert [s["key"] for s in data_["selectors"]] == ["table", "layer", "param", "step"]
    steps = [i["keys"]["step"] for i in data_["items"] if i["keys"]["table"] == "grads" and i["keys"]["param"] == "bias"
             and i["keys"]["layer"] == "fc"]
    assert len(steps) == MAX_STEPS and steps[0] == "0" and steps[-1] == "29"
    last = [i for i in data_["items"] if i["keys"] == {"table": "weights", "layer": "fc", "param": "weight", "step": "29"}][0]
    assert [s["name"] for s in last["series"]] == ["step 0", "step 29"]
    assert all(_mass(s["density"]) > 0 for s in last["series"])
    w = run.table("weights")
    row = w[(w.step == 29) & (w.layer == "fc") & (w.param == "weight") & w.channel.isna()]
    assert last["stats"]["rows"][1][3] == pytest.approx(float(row["std"].iloc[0]), rel=1e-3)  # not channel 0's
    assert any("thinned" in n for n in data_["notes"])
    feats = [i for i in data_["items"] if i["keys"]["table"] == "features"]  # a layer's output, its histogram drawn
    assert feats and {i["keys"]["param"] for i in feats} == {"output"}
    assert all(_mass(s["density"]) > 0 for i in feats for s in i["series"])


def test_items_stop_at_the_size_bound(rep_run, monkeypatch):
    full = explorer_data(load_run(rep_run))
    monkeypatch.setattr(explorer, "MAX_NUMBERS", 2000)
    cut = explorer_data(load_run(rep_run))
    assert 0 < len(cut["items"]) < len(full["items"])
    assert sum(explorer._size(i) for i in cut["items"]) <= 2000
    assert any("size limit" in n for n in cut["notes"])


def test_embedded_json_cannot_close_its_element():
    data = {"layer": "</script><script>alert(1)</script><!--", "x": [1.5, None]}
    text = embedded_json(data)
    assert "<" not in text and ">" not in text and json.loads(text) == data


def test_report_inlines_the_library_and_the_data(rep_run):
    html = write_report(rep_run).read_text(encoding="utf-8")
    assert html.count("plotly.js (cartesian - minified) v4.1.1") == 1
    start = html.index('<script type="application/json" id="nndist-explorer-data">') + len(
        '<script type="application/json" id="nndist-explorer-data">')
    data = json.loads(html[start:html.index("</script>", start)])
    assert data == json.loads(json.dumps(explorer_data(load_run(rep_run))))
    assert len(html.encode()) < 8 * 1024 * 1024
