"""The monitor under ``torchrun`` with 2 gloo processes against the same data in one process.

DDP: weights and grads are summarised by rank 0, features merged over both ranks' halves of the
batch. FSDP2 (``fully_shard``): parameters and gradients are half-size DTensor shards on each rank,
summarised shard by shard and merged. Both runs compute the same gradients bit for bit (see
``monitor_dist_script.py``), so every count, extreme and quantile of every table must be equal,
and the moments (merged in float64 in another order) agree to ``1e-12`` relative.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitor_cases import CLOSE, EXACT

pytestmark = pytest.mark.slow  # three interpreter starts of torch, two of them under torchrun

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("monitor_dist_script.py")
KEYS = {"weights": ["step", "layer", "param", "channel"], "grads": ["step", "layer", "param", "channel"],
        "features": ["step", "layer", "channel"], "histograms": ["table", "step", "layer", "param", "left"]}


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")


def _run(mode: str, out: Path, per_channel: bool) -> None:
    args = [str(SCRIPT), mode, str(out), "1" if per_channel else "0"]
    if mode != "single":
        port = str(29500 + os.getpid() % 1000 + (7 if mode == "fsdp" else 3))
        args = ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port, *args]
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one(tmp_path, mode: str) -> None:  # noqa: ANN001
    per_channel = mode == "fsdp"  # shards of dim 0 are the per-channel case that needs care
    _run("single", tmp_path / "one", per_channel)
    _run(mode, tmp_path / "two", per_channel)
    for table, keys in KEYS.items():
        a = pd.read_parquet(tmp_path / "one" / f"{table}.parquet").sort_values(keys, na_position="first").reset_index(drop=True)
        b = pd.read_parquet(tmp_path / "two" / f"{table}.parquet").sort_values(keys, na_position="first").reset_index(drop=True)
        assert len(a) == len(b) and len(a), table
        if table == "histograms":
            pd.testing.assert_frame_equal(a, b)
            continue
        for col in keys + EXACT:
            assert np.array_equal(a[col].to_numpy(), b[col].to_numpy()) or \
                np.array_equal(a[col].to_numpy(dtype=float), b[col].to_numpy(dtype=float), equal_nan=True), (table, col)
        for col in CLOSE:
            np.testing.assert_allclose(a[col], b[col], rtol=1e-12, atol=1e-15, err_msg=f"{table}.{col}")
    manifest = (tmp_path / "two" / "manifest.json").read_text()
    assert '"world_size": 2' in manifest and (f'"sharded": {str(mode == "fsdp").lower()}' in manifest)
