"""Progress of long work: a bar with rate and ETA on a terminal, a few plain lines in a log.

:func:`progress_bar` gives a ``tqdm`` bar when stderr is a terminal. When it is not (a CI log, a
batch job, ``make demo > log``), a bar's redraws would flood the log, so it gives
:class:`LineProgress` instead: one line when a stage starts, at most one line every
:data:`LOG_INTERVAL` seconds while it runs (count, rate, ETA), and one when it ends.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["LOG_INTERVAL", "LineProgress", "progress_bar"]

#: Seconds between two lines of progress in a log.
LOG_INTERVAL = 30.0


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class LineProgress:
    """A progress counter that writes plain lines: at start, every ``interval`` seconds, at the end.

    It has the part of tqdm's interface the package uses (``update``, ``close``, context manager).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, initial: int = 0,
                 stream: TextIO | None = None, interval: float = LOG_INTERVAL) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.start = self.last = time.monotonic()
        self.start_n = initial
        self.closed = False
        self._line("started")

    def _line(self, what: str) -> None:
        elapsed = time.monotonic() - self.start
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {what}", f"{self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if done and elapsed > 0:
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total and what != "done":
                parts.append(f"ETA {_fmt_seconds(max(self.total - self.n, 0) / rate)}")
            parts.append(f"elapsed {_fmt_seconds(elapsed)}")
        print(", ".join(parts), file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line("running")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line("done")

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent:
    """No progress at all (``enabled=False``)."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(total: int | None, desc: str, unit: str = "it", *, enabled: bool = True, initial: int = 0,
                 leave: bool = True) -> Any:
    """A progress display for ``total`` units of work: tqdm on a terminal, lines in a log, or nothing.

    Args:
        total: units of work (None if unknown).
        desc: what is being done (the stage's name).
        unit: the unit (``img``, ``step``, ``tensor``).
        enabled: False gives a display that shows nothing.
        initial: units already done (a resumed run).
        leave: keep the finished bar on a terminal.
    """
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave)
    return LineProgress(total, desc, unit, initial=initial)
