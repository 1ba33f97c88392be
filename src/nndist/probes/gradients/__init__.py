"""Channel-wise gradients: emission and absorption of local gradients (paper, section 2.2).

``emission_absorption(model, inputs, targets)`` returns, for every handled layer, each sample's
emission ``(B, C_out)`` and absorption ``(B, C_in)`` and the batch sum of the channel-to-channel
norms ``(C_out, C_in)``. Each layer type's kernel lives in its own module with its derivation
(:mod:`.conv2d`, :mod:`.linear`); :mod:`.core` holds the hooks, the loss and the handler table,
which :func:`register_handler` extends.
"""

from __future__ import annotations

from .conv2d import conv2d_handler, conv2d_local_gradient_norms
from .core import HANDLERS, GradientResults, Handler, HandlerTable, TrainModeNotice, emission_absorption, register_handler
from .linear import linear_handler, linear_local_gradient_norms
from .types import LayerGradients

__all__ = [
    "HANDLERS",
    "GradientResults",
    "Handler",
    "HandlerTable",
    "LayerGradients",
    "TrainModeNotice",
    "conv2d_handler",
    "conv2d_local_gradient_norms",
    "emission_absorption",
    "linear_handler",
    "linear_local_gradient_norms",
    "register_handler",
]
