r"""Emission and absorption of a fully connected layer (paper, Proposition 1).

For ``v = W a`` with ``W`` of shape ``(C_out, C_in)`` and ``g = dL/dv``, the gradient reaching input
``j`` is ``sum_i g_i W_ij``, so the local gradient from output ``i`` to input ``j`` is
``LG^{i->j} = g_i W_ij``. When the layer acts on extra leading dimensions (tokens, positions:
``a`` of shape ``(B, *, C_in)``), ``LG^{i->j}`` is the map ``g_i[*] W_ij`` over them and its norm
factorises::

    ||LG^{i->j}|| = |W_ij| * ||g_i||,     ||g_i|| = sqrt(sum_* g_i[*]^2)

hence ``Em_i = ||g_i|| * sum_j |W_ij|`` and ``Ab_j = sum_i |W_ij| ||g_i||`` (a matrix product), and the
batch sum of the norms is ``|W_ij| * sum_b ||g_i^b||``. Nothing of size ``B x C_out x C_in`` is formed.
As for convolutions, ``sum_i Em_i = sum_j Ab_j`` for every sample.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import NndistError
from .types import LayerGradients


def linear_local_gradient_norms(weight: Tensor, grad_output: Tensor) -> LayerGradients:
    """Emission, absorption and norm sum for ``weight`` ``(C_out, C_in)`` and ``grad_output`` ``(B, *, C_out)``."""
    B, c_out = grad_output.shape[0], grad_output.shape[-1]
    gn = grad_output.reshape(B, -1, c_out).pow(2).sum(1).sqrt()  # (B, C_out)
    absw = weight.abs().to(gn.dtype)  # (C_out, C_in)
    emission = gn * absw.sum(1)  # (B, C_out)
    absorption = gn @ absw  # (B, C_in)
    norm_sum = absw * gn.sum(0)[:, None]  # (C_out, C_in)
    return LayerGradients(emission, absorption, norm_sum)


def linear_handler(module: nn.Module, input: Tensor, grad_output: Tensor) -> LayerGradients:
    """Handler for :class:`torch.nn.Linear`."""
    assert isinstance(module, nn.Linear)
    if grad_output.dim() < 2:
        raise NndistError(f"Linear got an unbatched input of shape {tuple(input.shape)}; pass a (B, ..., C_in) batch")
    g = grad_output.detach()
    if g.dtype not in (torch.float32, torch.float64):
        g = g.float()
    return linear_local_gradient_norms(module.weight.detach(), g)
