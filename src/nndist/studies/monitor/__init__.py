"""The training monitor: ``nndist.Monitor`` and what it is made of.

- :mod:`.monitor`: :class:`Monitor` (arming hooks, the step, merging across ranks).
- :mod:`.targets`: the model behind its wrappers, the watched layers, channels, local shards.
- :mod:`.rundir`: the run directory (new, replaced, resumed, refused) and one step's rows.
- :mod:`.probe`: Emission and Absorption on a fixed probe batch during training.
"""

from __future__ import annotations

from .monitor import WATCH, Monitor

__all__ = ["WATCH", "Monitor"]
