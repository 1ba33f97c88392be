"""The report of a monitor run: figures, sections, TensorBoard events with the stored bucket edges,
``nndist report`` on a running (parts) and a finished run, and the page in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nndist
from nndist.cli import main
from nndist.results import layout, load_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))
from monitor_cases import data, tiny, train  # noqa: E402
from test_report_browser import _run as _chromium_run  # noqa: E402
from test_report_browser import chromium  # noqa: E402,F401  (the fixture)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory) -> Path:  # noqa: ANN001
    out = tmp_path_factory.mktemp("monitor") / "run"
    model = tiny()
    probe = data(1, seed=3, batch=4)[0]
    with nndist.Monitor(model, out, every=2, gradients_every=4, probe=probe) as mon:
        train(model, data(9), lambda i: mon.step())
    return out


def test_close_writes_figures_report_and_events(monitored: Path) -> None:
    run = load_run(monitored)
    for table in ("weights", "grads", "features"):
        for name in ("bands", "last_histograms"):
            assert run.file(layout.figure_file(name, table)).stat().st_size > 5000
    assert run.file(layout.figure_file("std_heatmap")).is_file() and run.file(layout.figure_file("channel_gradients")).is_file()
    page = run.file(layout.REPORT).read_text()
    assert "not produced" not in page and "Layers (std at the last recorded step)" in page
    assert page.count("<img") == 8 and "Emission and Absorption per channel at step 8" in page


def test_tensorboard_histograms_have_the_stored_edges(monitored: Path) -> None:
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(monitored / "tb"), size_guidance={event_accumulator.HISTOGRAMS: 0,
                                                                                   event_accumulator.SCALARS: 0})
    acc.Reload()
    run = load_run(monitored)
    hist, weights = run.table("histograms"), run.table("weights")
    tags = acc.Tags()["histograms"]
    assert {"weights/conv/weight", "grads/fc/bias", "features/bn"} <= set(tags)
    for tag, (table, layer, param) in {"weights/conv/weight": ("weights", "conv", "weight"),
                                       "features/norm": ("features", "norm", None)}.items():
        events = acc.Histograms(tag)
        assert [e.step for e in events] == [0, 2, 4, 6, 8]
        for e in events:
            h = hist[(hist["table"] == table) & (hist["layer"] == layer) & (hist["step"] == e.step)]
            h = h[h["param"].isna()] if param is None else h[h["param"] == param]
            limits = np.array(e.histogram_value.bucket_limit)
            assert set(h["right"]) <= set(limits)  # the stored edges themselves, not re-binned
            assert sum(e.histogram_value.bucket) == h["count"].sum() == e.histogram_value.num
    std = acc.Scalars("weights/conv/weight/std")
    want = weights[(weights["layer"] == "conv") & (weights["param"] == "weight") & weights["channel"].isna()]
    np.testing.assert_allclose([s.value for s in std], want["std"], rtol=1e-6)
    assert {"grads/head/weight/norm", "emission/conv", "absorption/fc"} <= set(acc.Tags()["scalars"])


def test_nndist_report_on_a_running_run(tmp_path, capsys) -> None:  # noqa: ANN001
    model = tiny()
    mon = nndist.Monitor(model, tmp_path / "run", every=1, watch=("weights", "features"))
    train(model, data(3), lambda i: mon.step())
    assert (tmp_path / "run" / "weights.parquet").is_dir()  # parts: still running
    assert main(["report", str(tmp_path / "run")]) == 0
    page = (tmp_path / "run" / layout.REPORT).read_text()
    assert "Weights at step 2" in page and "bands_weights.png" in page
    mon.close(report=False)
    assert (tmp_path / "run" / "weights.parquet").is_file()
    capsys.readouterr()


@pytest.mark.browser
def test_monitor_report_in_chromium(chromium, monitored: Path, tmp_path) -> None:  # noqa: ANN001, F811
    url = (monitored / layout.REPORT).resolve().as_uri()
    dom = _chromium_run(chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<pre id="nndist-selfcheck"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    check = json.loads(html.unescape(m.group(1)))
    assert check["errors"] == [] and check["images"] == 8 and check["broken_images"] == []
    assert isinstance(pd.read_parquet(monitored / "features.parquet"), pd.DataFrame)
