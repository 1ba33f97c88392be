"""Channel-wise gradients: emission and absorption of local gradients (paper, section 2.2).

``emission_absorption(model, inputs, targets)`` returns, for every handled layer, each sample's
emission ``(B, C_out)`` and absorption ``(B, C_in)`` and the batch sum of the channel-to-channel
norms ``(C_out, C_in)``; ``definition="author_code"`` gives the quantities of the author's published
code instead (:mod:`.author_code`). Each layer type's kernel lives in its own module with its
derivation (:mod:`.convnd` and :mod:`.conv2d`, :mod:`.conv_transpose`, :mod:`.linear`,
:mod:`.attention`); :mod:`.reduce` turns channel-pair norms into either definition's statistics;
:mod:`.coverage` says what has no local gradient and why; :mod:`.core` holds the hooks, the loss
and the handler table, which :func:`register_handler` extends.
"""

from __future__ import annotations

from .attention import FunctionalLinearsHandler, MultiheadAttentionHandler
from .author_code import AUTHOR_TARGET_LAYERS, author_seed, layers_like_author
from .conv2d import conv2d_handler, conv2d_local_gradient_norms
from .conv_transpose import conv_transpose_handler, conv_transpose_local_gradient_sq_norms
from .convnd import conv_handler, conv_local_gradient_sq_norms
from .core import (
    HANDLERS,
    ROOT,
    GradientResults,
    Handler,
    HandlerTable,
    TrainModeNotice,
    check_layers,
    emission_absorption,
    register_handler,
)
from .linear import LINEAR_TYPES, linear_handler, linear_local_gradient_norms
from .types import DEFINITIONS, CompositeHandler, LayerGradients, Track

__all__ = [
    "AUTHOR_TARGET_LAYERS",
    "DEFINITIONS",
    "HANDLERS",
    "LINEAR_TYPES",
    "ROOT",
    "CompositeHandler",
    "FunctionalLinearsHandler",
    "GradientResults",
    "Handler",
    "HandlerTable",
    "LayerGradients",
    "MultiheadAttentionHandler",
    "Track",
    "TrainModeNotice",
    "author_seed",
    "check_layers",
    "conv2d_handler",
    "conv2d_local_gradient_norms",
    "conv_handler",
    "conv_local_gradient_sq_norms",
    "conv_transpose_handler",
    "conv_transpose_local_gradient_sq_norms",
    "emission_absorption",
    "layers_like_author",
    "linear_handler",
    "linear_local_gradient_norms",
    "register_handler",
]
