"""Nothing a user had is lost: --overwrite swaps in only a finished run, one process per directory.

Real ``nndist gradients`` processes are interrupted (SIGINT) or killed (SIGKILL) in the middle of
an ``--overwrite`` run, and two processes are started on one directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nndist.errors import NndistError
from nndist.results import RunWriter, layout

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))


def _gradients(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nndist", "gradients", "--model", "paper_cnn", "--data", "shapes", "--device", "cpu",
            "--no-progress", "--out", str(out), *extra]


def _digest(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.05)


def _user_sigint() -> None:
    """In the child: SIGINT as a terminal delivers it. A test worker may hand its children SIGINT
    blocked or ignored (both are inherited across exec), and Ctrl-C would then never arrive."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_masks(pid: int) -> str:
    try:
        return ", ".join(line.strip() for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                         if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
    except OSError:
        return "no /proc"


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    done = subprocess.run(_gradients(run, "--samples", "16", "--no-report"), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return run


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_overwrite_leaves_the_old_results_intact(finished: Path, sig: signal.Signals) -> None:
    before = _digest(finished)
    # A slower run (one image per batch, all 1000 images: several seconds of measuring, so that a
    # test process the machine's load holds back still signals before the run ends): interrupted
    # once it is measuring.
    proc = subprocess.Popen(_gradients(finished, "--overwrite", "--batch-size", "1", "--no-report"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_user_sigint)
    staging = layout.staging_dir(finished)
    _wait_for(staging / layout.MANIFEST, proc)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    masks = _signal_masks(proc.pid)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, f"the run ended with 0 after {sig.name} ({masks}); its stderr: {err[-2000:]}"
    assert _digest(finished) == before  # every old file, byte for byte
    # The next --overwrite run finishes, replaces them and cleans up after the interrupted one.
    done = subprocess.run(_gradients(finished, "--overwrite", "--samples", "32", "--no-report"), env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((finished / layout.MANIFEST).read_text())["n_samples"] == 32
    assert not staging.exists() and not layout.retired_dir(finished).exists()
    assert not layout.lock_file(finished).exists()


@pytest.mark.slow
def test_a_second_process_on_the_same_directory_gets_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen(_gradients(out, "--batch-size", "8", "--samples", "96", "--no-report"), env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / layout.MANIFEST, first)
    first.send_signal(signal.SIGSTOP)  # held mid-run, whatever the machine's speed
    try:
        second = subprocess.run(_gradients(out, "--overwrite", "--samples", "8"), env=_env(), capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "in use by another nndist process" in lines[0], second.stderr
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    manifest = json.loads((out / layout.MANIFEST).read_text())
    assert manifest["finished"] and manifest["n_samples"] == 96  # the first run's complete results
    assert not (out / layout.STATE_DIR).exists()  # removed once the run completed


def test_a_killed_runs_lock_does_not_block_its_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(_gradients(out, "--batch-size", "4", "--samples", "400", "--no-report"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(out / layout.STATE_FILES[layout.GRADIENTS], proc)
    proc.kill()
    proc.communicate()
    done = subprocess.run([sys.executable, "-m", "nndist", "gradients", "--resume", "--out", str(out), "--no-progress",
                           "--no-report", "--keep-state"], env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / layout.MANIFEST).read_text())["finished"]
    assert (out / layout.STATE_FILES[layout.GRADIENTS]).is_file()  # --keep-state


def test_a_swap_cut_between_its_two_renames_is_completed_or_undone(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # killed after the old results were moved aside and before the new ones moved in
    layout.retired_dir(out).mkdir()
    (layout.retired_dir(out) / "old.txt").write_text("old")
    layout.staging_dir(out).mkdir()
    (layout.staging_dir(out) / "new.txt").write_text("new")
    writer = RunWriter(out, layout.GRADIENTS)
    with pytest.raises(NndistError, match="not empty"):
        writer.prepare(overwrite=False, resume=False)
    assert (out / "new.txt").read_text() == "new" and not layout.retired_dir(out).exists()
    # nothing to move in: the old results come back
    os.rename(out, layout.retired_dir(out))
    with pytest.raises(NndistError, match="not empty"):
        RunWriter(out, layout.GRADIENTS).prepare(overwrite=False, resume=False)
    assert (out / "new.txt").read_text() == "new"


def test_the_lock_is_held_until_release(tmp_path: Path) -> None:
    out = tmp_path / "run"
    a = RunWriter(out, layout.MONITOR)
    a.prepare(overwrite=False, resume=False)
    with pytest.raises(NndistError, match=f"pid {os.getpid()}"):
        RunWriter(out, layout.MONITOR).prepare(overwrite=True, resume=False)
    a.release()
    b = RunWriter(out, layout.MONITOR)
    b.prepare(overwrite=True, resume=False)
    b.release()
