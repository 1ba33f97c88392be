"""The report in headless Chromium: no script errors, every image loads, the claims table is full.

Uses Debian's ``chromium`` (/usr/bin/chromium). When it is missing and we are root, the session
fixture installs it with apt-get; otherwise the test is skipped with the reason. It never
downloads a browser of its own. The page's own self-check (a hidden ``#nndist-selfcheck``
element filled on load) is read with ``--dump-dom``; a screenshot is kept as
``test-artifacts/report.png`` in the repository root.
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
from nndist.report import write_claims
from nndist.report import write_report

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
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert console_errors == []

    out = ROOT / "test-artifacts" / "report.png"
    out.parent.mkdir(exist_ok=True)
    shot = _run(chromium, tmp_path, "--window-size=1280,4000", f"--screenshot={out}", url)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert out.stat().st_size > 10_000
