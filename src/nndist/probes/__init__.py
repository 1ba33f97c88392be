"""The probe layer: what a model's layers see and send (hooks, features, channel-wise gradients)."""

from __future__ import annotations

from .features import stream_features
from .gradients import emission_absorption, register_handler
from .hooks import forward_hooks, layer_modules

__all__ = ["emission_absorption", "forward_hooks", "layer_modules", "register_handler", "stream_features"]
