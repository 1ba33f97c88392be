"""The results layer: the only code that knows a run directory's file names, columns and formats.

- :mod:`.layout`: every file name, the layer file stem, stage <-> epoch, run keys.
- :mod:`.schema`: every table's columns.
- :mod:`.writer`: :class:`RunWriter`, the one writer (studies and test fixtures).
- :mod:`.state`: resume state and its encodings.
- :mod:`.reader`: :class:`RunDir` / :func:`load_run`, the one reader.
"""

from __future__ import annotations

from . import layout
from .reader import RunDir, load_run
from .schema import TABLES, columns
from .writer import RunWriter, utc_now, versions

__all__ = ["TABLES", "RunDir", "RunWriter", "columns", "layout", "load_run", "utc_now", "versions"]
