"""Atomic file output: nothing already written is lost or half-written.

Every file nndist writes goes through :func:`atomic_path`: the content is written to a
temporary file beside the target (``.<name>.tmp-<random>``) and renamed over it only when
complete, so a run killed at any moment leaves either the old file or the new one.
Leftover temporary files are ignored by readers and removed by :func:`clean_temporaries`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import NndistError

TMP_MARK = ".tmp-"


class UnwritableError(NndistError, OSError):
    """An output path that cannot be created; still an ``OSError`` for callers that tolerate it."""


def _default_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (0o666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path to write; on success it is renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Raises:
        UnwritableError: ``path``'s folder cannot be created or written (an ``NndistError``
            naming the path, and an ``OSError``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    except OSError as exc:
        raise UnwritableError(
            f"cannot write {path} ({exc.strerror or type(exc).__name__}: {exc.filename or path.parent}); "
            "choose another output path or make its folder writable"
        ) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the usual permissions.
        os.chmod(tmp_path, _default_mode())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Writes ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(path: str | os.PathLike[str], df: Any) -> None:
    """Writes a pandas DataFrame to Parquet atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def clean_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Removes temporary files left by an interrupted write under ``directory``."""
    removed = []
    for p in Path(directory).rglob(f"*{TMP_MARK}*"):
        if p.is_file() and p.name.startswith("."):
            p.unlink()
            removed.append(p)
    return removed
