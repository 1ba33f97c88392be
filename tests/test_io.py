"""Atomic writes: a failed write leaves the old file intact and no temporary file behind."""

import os
import stat

import pytest

from nndist.io import atomic_path, clean_temporaries, write_json, write_text


def test_failed_write_keeps_old_content(tmp_path):
    target = tmp_path / "table.csv"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_written_files_get_normal_permissions(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1})
    mode = stat.S_IMODE(os.stat(tmp_path / "m.json").st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH


def test_clean_temporaries_removes_leftovers(tmp_path):
    (tmp_path / "sub").mkdir()
    leftover = tmp_path / "sub" / ".loss.parquet.tmp-abc123"
    leftover.write_text("partial")
    keep = tmp_path / "sub" / "loss.parquet"
    keep.write_text("done")
    assert clean_temporaries(tmp_path) == [leftover]
    assert keep.exists() and not leftover.exists()


def test_tune_allocator_applies_on_glibc():
    import platform

    from nndist.allocator import tune_allocator

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc tuning applies to glibc only")
    assert tune_allocator() is True
