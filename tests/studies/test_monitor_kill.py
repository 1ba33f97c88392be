"""A training script with a monitor, killed with SIGKILL, loses at most the logging step in progress;
``resume=True`` continues its run and a replay from the script's checkpoint leaves no duplicates.

The script (a real subprocess) prints each step number after ``step()`` returns; the test kills it
at a random moment after a few steps, checks the run directory against the printed steps, and
starts it again with ``resume=True`` from an earlier step, three times over.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from nndist.cli import main
from nndist.results import load_run

pytestmark = pytest.mark.slow  # four interpreter starts of torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    import nndist
    from monitor_cases import tiny, data
    out, start = sys.argv[1], int(sys.argv[2])
    model = tiny()
    mon = nndist.Monitor(model, out, every=1, per_channel=True, resume=start > 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for i, (x, y) in enumerate(data(400)):
        if i < start:
            continue
        torch.nn.functional.cross_entropy(model(x), y).backward()
        mon.step(step=i)
        print(i, flush=True)
        opt.step(); opt.zero_grad()
    mon.close(report=False)
""")


def _run_until_killed(script: Path, out: Path, start: int, steps: int, rng: random.Random) -> list[int]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(start)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    done = []
    assert proc.stdout is not None
    for line in proc.stdout:
        done.append(int(line))
        if len(done) >= steps:
            time.sleep(rng.random() * 0.05)  # somewhere inside a later step, maybe mid-write
            break
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()  # waits and closes the pipes
    assert done, err[-2000:]
    return done


def test_sigkill_loses_at_most_the_step_in_progress_and_resume_replays(tmp_path) -> None:  # noqa: ANN001
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests" / "studies")))
    out = tmp_path / "run"
    rng = random.Random(3)
    start = 0
    for attempt in range(3):
        done = _run_until_killed(script, out, start, steps=4 + attempt, rng=rng)
        w = pd.read_parquet(out / "weights.parquet")  # a folder of parts: it reads
        steps = sorted(w["step"].unique())
        assert set(done) <= set(steps) and len(steps) <= done[-1] + 2  # at most the step in progress beyond
        assert (w.groupby(["step", "layer", "param", "channel"], dropna=False).size() == 1).all()  # no duplicates
        assert main(["report", str(out)]) == 0  # the report reads an unfinished run
        start = max(0, done[-1] - 2)  # the script's own checkpoint is a little behind: steps are replayed
    run = load_run(out)
    assert run.manifest["status"] == "running" and len(run.manifest["resumed"]) == 2
    for name in ("weights", "grads", "features", "histograms"):
        df = run.table(name)
        keys = [c for c in ("table", "step", "layer", "param", "channel", "left") if c in df]
        assert not df.duplicated(keys).any(), name
