"""``NndistCallback`` for Lightning: a :class:`nndist.Monitor` on the ``LightningModule``.

Example::

    trainer = lightning.Trainer(callbacks=[NndistCallback("runs/mine", every=100)])
    trainer.fit(module, loader)

The monitor is created when fitting starts (on every rank; rank 0 writes), steps in
``on_before_optimizer_step`` (after backward and gradient accumulation, before the optimizer,
numbered by ``trainer.global_step``) and is closed when fitting ends; an exception in fitting
removes its hooks and leaves the run unfinished (``resume=True`` continues it, as when fitting
resumes from a checkpoint). Layer names are those of the ``LightningModule``
(``model.layer1.conv1`` for a module kept as ``self.model``).
"""

from __future__ import annotations

from typing import Any

from . import MonitorCallback, require

_pl = require("lightning.pytorch", "lightning")

__all__ = ["NndistCallback"]


class NndistCallback(MonitorCallback, _pl.Callback):
    """Runs a :class:`nndist.Monitor` during ``Trainer.fit``; the arguments are the monitor's after the model."""

    _last: int | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.start(pl_module)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        step = int(trainer.global_step)
        if step != self._last:  # several optimizers: one monitor step
            self.step(step)
            self._last = step

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.finish(exception)
