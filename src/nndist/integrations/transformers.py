"""``NndistCallback`` for the Hugging Face ``Trainer``: a :class:`nndist.Monitor` on the trained model.

Example::

    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds,
                                   callbacks=[NndistCallback("runs/mine", every=100)])
    trainer.train()

The monitor is created in ``on_train_begin`` (on every process; rank 0 writes), steps in
``on_pre_optimizer_step`` (after backward, gradient accumulation and clipping, before the
optimizer, numbered by ``state.global_step``) and is closed in ``on_train_end``. The ``Trainer``
has no exception callback: after a failed ``train()`` call ``callback.monitor.close()`` or start
again with ``resume=True``.
"""

from __future__ import annotations

from typing import Any

from . import MonitorCallback, require

_tf = require("transformers", "transformers")

__all__ = ["NndistCallback"]


class NndistCallback(MonitorCallback, _tf.TrainerCallback):
    """Runs a :class:`nndist.Monitor` during ``Trainer.train``; the arguments are the monitor's after the model."""

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.start(model)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step(int(state.global_step))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.finish()
