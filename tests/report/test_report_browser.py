"""The report in headless Chromium: no script errors, every image loads, the claims table is full,
and the explorer works: changing the layer changes the plotted data, no request leaves the page.

Uses Debian's ``chromium`` (/usr/bin/chromium). When it is missing and we are root, the session
fixture installs it with apt-get; otherwise the test is skipped with the reason. It never
downloads a browser of its own. The page's own self-check (a hidden ``#nndist-selfcheck``
element filled on load) is read with ``--dump-dom``; the explorer is driven over the DevTools
protocol (:mod:`chromium_pipe`), which also records every request and console error.
Screenshots are kept as ``test-artifacts/report.png`` and ``test-artifacts/<kind>-explorer.png``
in the repository root.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import run_fixtures as rf
from chromium_pipe import Browser
from weights_fixtures import write_planted_pair

from nndist.report import write_claims
from nndist.report import write_report
from nndist.results import load_run
from nndist.studies.compare import run_compare

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or (shutil.which("chromium", path="/usr/bin"))
    if found:
        return found
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get): "
                    "apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        update = subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=300)
        proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                              capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"apt-get install chromium failed: {(proc.stderr or update.stderr).strip()[-300:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but no chromium command is on PATH")
    return found


def _run(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_in_chromium(chromium, tmp_path):
    run = rf.make_reproduce_run(tmp_path / "run", seeds=(0, 1), diverged=("xavier_uniform",), epochs=3, n_values=200)
    write_claims(run)
    url = write_report(run).resolve().as_uri()

    dom = _run(chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<pre id="nndist-selfcheck"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    assert m and m.group(1).strip(), "the page's self-check did not run (script error before load?)"
    check = json.loads(html.unescape(m.group(1)))
    assert check["errors"] == []
    assert check["images"] == 4 and check["broken_images"] == []
    assert check["claim_rows"] == 15
    assert check["explorer"]["ready"] and check["explorer"]["error"] is None and check["explorer"]["draws"] >= 1
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert console_errors == []

    out = ROOT / "test-artifacts" / "report.png"
    out.parent.mkdir(exist_ok=True)
    shot = _run(chromium, tmp_path, "--window-size=1280,4000", f"--screenshot={out}", url)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert out.stat().st_size > 10_000


# ------------------------------------------------------------------------------------ the explorer
PLOTTED = "JSON.stringify(document.getElementById('nndist-hist').data.map(t => [t.name, t.x[0], t.y]))"
TITLE = "document.getElementById('nndist-hist').layout.title.text"


def _choose(b: Browser, select_id: str, index: int) -> str:
    """Picks option ``index`` of a select as a user does (a change event); returns its value."""
    return b.evaluate(f"""(() => {{ const s = document.getElementById({select_id!r});
        s.value = s.options[{index}].value; s.dispatchEvent(new Event('change')); return s.value; }})()""")


def _runs(kind: str, root: Path) -> Path:
    if kind == "reproduce":
        run = rf.make_reproduce_run(root / "run", inits=("orthogonal", "xavier_uniform"), epochs=2, n_values=200)
    elif kind == "gradients":
        run = rf.make_gradients_run(root / "run", n_samples=60)
    else:
        a, b, _ = write_planted_pair(root)
        run = run_compare([str(a), str(b)], root / "run", progress=False, report=False)
        from nndist.report import draw_figures

        draw_figures(run)
    write_claims(run)
    return run


@pytest.mark.parametrize("kind", ["reproduce", "gradients", "compare"])
def test_explorer_in_chromium(chromium, tmp_path, kind):
    run = _runs(kind, tmp_path)
    page = write_report(run).resolve()
    with Browser(chromium, tmp_path / "profile") as b:
        b.open(page.as_uri())
        b.wait_until("window.nndistExplorer && (window.nndistExplorer.ready || window.nndistExplorer.error)")
        assert b.evaluate("window.nndistExplorer.error") is None
        first, title = b.evaluate(PLOTTED), b.evaluate(TITLE)
        layers = b.evaluate("Array.from(document.getElementById('nndist-sel-layer').options).map(o => o.value)")
        assert len(layers) >= 2
        current = b.evaluate("document.getElementById('nndist-sel-layer').value")
        other = _choose(b, "nndist-sel-layer", 1 if layers.index(current) == 0 else 0)
        assert b.evaluate(PLOTTED) != first, "changing the layer did not change the plotted data"
        assert other in b.evaluate(TITLE) and b.evaluate(TITLE) != title
        _choose(b, "nndist-yscale", 1)
        assert b.evaluate("document.getElementById('nndist-hist').layout.yaxis.type") == "log"
        if kind == "gradients":
            _check_box_sorting(b, run)
        if kind == "compare":  # the most changed tensor opens first
            assert "lm_head · weight" in title
        out = ROOT / "test-artifacts" / f"{kind}-explorer.png"
        out.parent.mkdir(exist_ok=True)
        b.evaluate("document.getElementById('explorer').scrollIntoView()")
        b.screenshot(out, 1280, 1000)
        assert b.errors == []
        inside = (run.resolve().as_uri() + "/", "data:")  # the page, its figures, inline images
        outside = [u for u in b.requests if not u.startswith(inside)]
        assert outside == [], f"requests left the run directory: {outside}"
    assert out.stat().st_size > 10_000


def _check_box_sorting(b: Browser, run: Path) -> None:
    g = load_run(run).table("gradients")
    layer = b.evaluate("document.getElementById('nndist-box-layer').value")
    assert layer == b.evaluate("document.getElementById('nndist-sel-layer').value")  # the boxes follow the layer
    b.evaluate("""(() => { const s = document.getElementById('nndist-box-sort');
        s.value = 'median'; s.dispatchEvent(new Event('change')); })()""")
    order = b.evaluate("document.getElementById('nndist-box-emission').layout.xaxis.categoryarray")
    em = g[(g.layer == layer) & (g.stat == "emission")]
    expected = ["c" + str(c) for c in em.sort_values("q50", ascending=False, kind="stable")["channel"]]
    assert order == expected


def test_the_request_check_can_fail(chromium, tmp_path):
    page = tmp_path / "leaky.html"
    page.write_text('<html><body><img src="http://nndist.invalid/x.png"><script>console.error("boom")</script></body></html>')
    with Browser(chromium, tmp_path / "profile") as b:
        b.open(page.as_uri())
        assert "http://nndist.invalid/x.png" in b.requests
        assert any("boom" in e for e in b.errors)
