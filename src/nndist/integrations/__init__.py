"""Thin callbacks that run :class:`nndist.Monitor` inside other training loops (optional extras).

- :mod:`.lightning`: ``NndistCallback`` for Lightning (``pip install 'nndist[lightning]'``).
- :mod:`.transformers`: ``NndistCallback`` for the Hugging Face ``Trainer``
  (``pip install 'nndist[transformers]'``).

Each module imports its framework on import and says how to install it when it is missing.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import NndistError
from ..studies.monitor import Monitor

__all__ = ["MissingExtraError", "MonitorCallback", "require"]


class MissingExtraError(NndistError, ImportError):
    """An optional framework is not installed; the message names the extra that installs it."""


def require(module: str, extra: str) -> ModuleType:
    """Imports ``module`` or raises :class:`MissingExtraError` naming ``pip install 'nndist[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"nndist.integrations.{extra} needs {module.split('.')[0]}; install it with "
                                f"pip install 'nndist[{extra}]'") from None


class MonitorCallback:
    """What both callbacks share: the monitor's arguments, and the monitor once training starts.

    Args: those of :class:`nndist.Monitor` after the model.
    """

    def __init__(self, out: str | Path, *, every: int = 100, watch: Any = ("weights", "grads", "features"),
                 layers: Any = None, per_channel: bool = False, gradients_every: int | None = None,
                 probe: Any = None, resume: bool = False) -> None:
        self.out = out
        self.options = {"every": every, "watch": watch, "layers": layers, "per_channel": per_channel,
                        "gradients_every": gradients_every, "probe": probe, "resume": resume}
        self.monitor: Monitor | None = None

    def start(self, model: Any) -> None:
        self.monitor = Monitor(model, self.out, **self.options)

    def step(self, step: int) -> None:
        if self.monitor is not None:
            self.monitor.step(step=step)

    def finish(self, exception: BaseException | None = None) -> None:
        """Closes the monitor; after an exception only removes its hooks (the run stays resumable)."""
        if self.monitor is not None:
            if exception is None:
                self.monitor.close()
            else:
                self.monitor.__exit__(type(exception), exception, exception.__traceback__)
