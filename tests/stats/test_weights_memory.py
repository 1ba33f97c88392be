"""Streaming: a 2 GB two-shard checkpoint is summarised, and two are compared, in bounded memory.

Each measurement runs in a fresh interpreter under ``/usr/bin/time -v`` (or, without GNU time,
in a child whose ``RUSAGE_CHILDREN`` peak is read by an intermediate interpreter). The bound is
the issue's "largest tensor + 600 MB", counted above the peak of the same interpreter that only
imports :mod:`nndist.stats.weightstats`: torch and its libraries alone are resident at ~0.85 GB here
(a bare ``import torch``), which no streaming can remove.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from weights_fixtures import write_safetensors_stream

pytestmark = pytest.mark.slow  # writes 4 GB and reads them back: about a minute

SRC = Path(__file__).resolve().parents[2] / "src"
MB = 1 << 20
LARGEST = 256 * MB  # bytes of the largest tensor
ALLOWANCE = LARGEST + 600 * MB
GNU_TIME = Path("/usr/bin/time")


def _specs(shard: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """1 GB per shard: four 256 MB tensors (float32, bfloat16, float16, float32) and a small one."""
    base = f"model.layers.{shard}"
    return [
        (f"{base}0.attn.weight", "float32", (8192, 8192)),
        (f"{base}1.mlp.up.weight", "bfloat16", (16384, 8192)),
        (f"{base}2.mlp.down.weight", "float16", (8192, 16384)),
        (f"{base}3.embed.weight", "float32", (64, MB)),
        (f"{base}9.norm.weight", "float32", (4096,)),
    ]


def _checkpoint(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    weight_map = {}
    for shard in (1, 2):
        name = f"model-0000{shard}-of-00002.safetensors"
        write_safetensors_stream(folder / name, _specs(shard), seed=seed * 10 + shard)
        weight_map.update({n: name for n, _, _ in _specs(shard)})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("two_gb")
    try:
        yield _checkpoint(root / "a", 0), _checkpoint(root / "b", 1)
    finally:
        shutil.rmtree(root)  # pytest keeps old temporary folders: do not leave 4 GB behind


def _peak_rss(code: str) -> int:
    """Peak resident set size (bytes) of a fresh interpreter running ``code``."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    if GNU_TIME.is_file():
        out = subprocess.run([str(GNU_TIME), "-v", sys.executable, "-c", code], env=env,
                             capture_output=True, text=True, check=True)
        return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) * 1024
    wrapper = (
        "import resource, subprocess, sys\n"
        f"subprocess.run([sys.executable, '-c', {code!r}], check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) * 1024  # Linux: kilobytes


def _report(what: str, peak: int, baseline: int) -> None:
    print(f"\n{what}: peak RSS {peak / MB:.0f} MB, import-only baseline {baseline / MB:.0f} MB, "
          f"above it {(peak - baseline) / MB:.0f} MB (allowed {ALLOWANCE / MB:.0f} MB)")


@pytest.fixture(scope="module")
def baseline() -> int:
    torch_only = _peak_rss("import torch")
    base = _peak_rss("import nndist.stats.weightstats")
    print(f"\nbare `import torch`: peak RSS {torch_only / MB:.0f} MB")
    return base


def test_weight_table_of_2gb_checkpoint_stays_under_largest_tensor_plus_600mb(
    checkpoints: tuple[Path, Path], baseline: int
) -> None:
    a, _ = checkpoints
    total = sum(1 for s in (1, 2) for _ in _specs(s))
    n = sum(int(np.prod(shape)) for s in (1, 2) for _, _, shape in _specs(s))
    peak = _peak_rss(
        "from nndist.stats.weightstats import weight_table\n"
        f"t = weight_table({str(a)!r})\n"
        f"assert len(t) == {total} and int(t['n'].sum()) == {n}, t\n"
        "assert t['std'].between(0.019, 0.021).all(), t['std']\n"
    )
    _report("weight_table", peak, baseline)
    assert peak - baseline < ALLOWANCE


def test_compare_of_two_2gb_checkpoints_stays_bounded(checkpoints: tuple[Path, Path], baseline: int) -> None:
    a, b = checkpoints
    peak = _peak_rss(
        "from nndist.stats.weightstats import compare\n"
        f"t = compare([{str(a)!r}, {str(b)!r}])\n"
        "assert len(t) == 10 and (t['status'] == 'compared').all(), t\n"
        "assert t['rel_change'].between(1.3, 1.5).all(), t['rel_change']\n"  # independent: about sqrt(2)
    )
    _report("compare", peak, baseline)
    assert peak - baseline < ALLOWANCE


def test_run_compare_of_two_2gb_checkpoints_stays_bounded(checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    """The compare run directory adds the histograms of every tensor, collected in the same pass."""
    a, b = checkpoints
    # The same interpreter without the comparison: its imports, and those of the manifest's versions().
    base = _peak_rss("import nndist.studies.compare\nfrom nndist.results import versions\nversions()")
    out = tmp_path / "cmp"
    peak = _peak_rss(
        "from nndist.studies.compare import run_compare\n"
        f"run_compare([{str(a)!r}, {str(b)!r}], {str(out)!r}, progress=False, report=False)\n"
    )
    _report("run_compare", peak, base)
    assert peak - base < ALLOWANCE
    import pandas as pd

    table = pd.read_parquet(out / "compare.parquet")
    assert len(table) == 10 and (table["status"] == "compared").all()
    assert pd.read_parquet(out / "histograms.parquet").groupby("source")["tensor"].nunique().tolist() == [10, 10]
