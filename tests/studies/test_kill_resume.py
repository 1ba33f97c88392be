"""A ``nndist reproduce`` run killed with SIGKILL at any moment continues with ``--resume`` and
ends with exactly the results of an uninterrupted run.

Each run is a real subprocess (``python -m nndist``), killed at three moments:

* ``mid_epoch``: after the step-2 training state (``--checkpoint-every 2``, 4 steps per epoch)
  and the tables and manifest that follow it are written, i.e. during step 3 of epoch 1;
* ``mid_save``: while a temporary file ``.<name>.tmp-<random>`` exists in the run directory
  (after the first training state). Polled every millisecond; if no temporary file is ever
  seen, the kill is simulated: the run is killed after a state save and a truncated copy of
  ``state/train.pt`` plus a garbage table are left as temporaries, which is what a kill inside
  ``atomic_path`` leaves behind (recorded as the ``mid_save_kill`` property: ``real`` or
  ``simulated``);
* ``between_stages``: after ``checkpoints/*/before.safetensors`` exist but before the first
  training state.

Runs use ``--no-report`` (figures and the report are not what is tested here; ``nndist report``
on each killed directory is). Every subprocess runs with one thread (``OMP_NUM_THREADS=1`` and friends), so floating-point
results are reproducible. ``nndist report`` must read the killed directory without crashing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from nndist.cli import main
from nndist.io import TMP_MARK

REPO = Path(__file__).resolve().parents[2]
CONFIG = ["--data", "shapes", "--inits", "orthogonal,zeros", "--epochs", "2", "--train-samples", "256",
          "--valid-samples", "64", "--checkpoint-every", "2", "--device", "cpu", "--no-progress", "--no-report"]
INITS = ("orthogonal", "zeros")
TABLES = ("loss", "accuracy", "weights", "features")
STATE = Path("state") / "train.pt"

pytestmark = pytest.mark.slow  # about 7 interpreter starts of torch + a 2-epoch run: over a minute


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), NNDIST_CACHE=str(tmp / "cache"), MPLBACKEND="Agg")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    return env


def _reproduce(out: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nndist", "reproduce", *CONFIG, "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _resume(run: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nndist", "reproduce", "--resume", str(run), "--no-progress", "--no-report"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _temporaries(run: Path) -> list[Path]:
    return [p for p in run.rglob(f".*{TMP_MARK}*") if p.is_file()]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300.0) -> bool:
    """Polls ``ready()`` every millisecond; SIGKILLs ``proc`` when it is true. False if ``proc`` ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            return True
        if proc.poll() is not None:
            proc.communicate()
            return False
        time.sleep(0.001)
    proc.kill()
    proc.communicate()
    raise AssertionError("the run neither reached the kill point nor ended in time")


class _MidEpoch:
    """True once the step-2 state and then the manifest after it have been written."""

    def __init__(self, run: Path) -> None:
        self.run, self.states, self.after = run, [], None

    def __call__(self) -> bool:
        s = _stamp(self.run / STATE)
        if s is not None and (not self.states or self.states[-1] != s):
            self.states.append(s)
            self.after = None
        if len(self.states) >= 2:  # step 0 (before training), then step 2
            m = _stamp(self.run / "manifest.json")
            if self.after is None:
                self.after = m
            elif m != self.after:  # the manifest written after the step-2 state: now in step 3
                return True
        return False


def _between_stages(run: Path):
    def ready() -> bool:
        befores = [run / "checkpoints" / i / "before.safetensors" for i in INITS]
        return all(p.is_file() for p in befores) and not (run / STATE).exists()

    return ready


def _mid_save(run: Path):
    def ready() -> bool:
        return (run / STATE).is_file() and bool(_temporaries(run))

    return ready


def _report_survives(run: Path, tmp: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``nndist report`` on a copy of the killed run: exit 0, or 2 with one line; never a crash."""
    copy = tmp / f"report-of-{run.name}"
    shutil.copytree(run, copy)
    code = main(["report", str(copy)])
    out, err = capsys.readouterr()
    assert code in (0, 2), (code, out, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip() or out.strip()


def _assert_same_run(run: Path, ref: Path) -> None:
    for init in INITS:
        for stage in ("before", "after"):
            got = load_file(run / "checkpoints" / init / f"{stage}.safetensors")
            want = load_file(ref / "checkpoints" / init / f"{stage}.safetensors")
            assert got.keys() == want.keys()
            for k in want:
                assert torch.equal(got[k], want[k]), f"{run.name}: {init}/{stage} {k} differs"
    for table in TABLES:
        pd.testing.assert_frame_equal(pd.read_parquet(run / f"{table}.parquet"), pd.read_parquet(ref / f"{table}.parquet"),
                                      check_exact=True, obj=f"{run.name}/{table}.parquet")


def test_killed_runs_resume_to_identical_results(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 record_property) -> None:
    started: list[subprocess.Popen] = []
    try:
        _check_kills_and_resumes(tmp_path, capsys, record_property, started)
    finally:
        for proc in started:  # a failed assertion must not leave runs behind
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def _check_kills_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str], record_property,
                             started: list[subprocess.Popen]) -> None:
    env = _env(tmp_path)

    def reproduce(out: Path) -> subprocess.Popen:
        started.append(_reproduce(out, env))
        return started[-1]

    ref = tmp_path / "uninterrupted"
    reference = reproduce(ref)  # runs while the others are killed

    killed: dict[str, Path] = {}
    # Between stages: the "before" checkpoints exist, the first training state does not.
    run = tmp_path / "between_stages"
    assert _kill_when(reproduce(run), _between_stages(run)), "ended before the kill point"
    assert not (run / STATE).exists()
    killed[run.name] = run

    # Mid-epoch: during step 3 of epoch 1.
    run = tmp_path / "mid_epoch"
    assert _kill_when(reproduce(run), _MidEpoch(run)), "ended before the kill point"
    state = torch.load(run / STATE, map_location="cpu", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2), "not killed mid-epoch"
    killed[run.name] = run

    # Mid-save: while a temporary file exists.
    run = tmp_path / "mid_save"
    hit = _kill_when(reproduce(run), _mid_save(run))
    if hit:
        assert _temporaries(run)
        record_property("mid_save_kill", "real")
    else:  # never caught a temporary file: simulate what a kill inside atomic_path leaves
        shutil.rmtree(run)
        assert _kill_when(reproduce(run), _MidEpoch(run))
        data = (run / STATE).read_bytes()
        (run / "state" / f".train.pt{TMP_MARK}sim0001").write_bytes(data[: len(data) // 2])
        (run / f".loss.parquet{TMP_MARK}sim0002").write_bytes(b"PAR1 half a table")
        record_property("mid_save_kill", "simulated")
    killed[run.name] = run

    for name, run in killed.items():
        _report_survives(run, tmp_path, capsys)

    resumes = {name: _resume(run, env) for name, run in killed.items()}
    started.extend(resumes.values())
    for name, proc in resumes.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: resume failed\n{err}"
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err

    for name, run in killed.items():
        assert _temporaries(run) == [], f"{name}: temporaries left after resume"
        _assert_same_run(run, ref)
