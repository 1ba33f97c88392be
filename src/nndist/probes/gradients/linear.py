r"""Emission and absorption of a fully connected layer (paper, Proposition 1).

For ``v = W a`` with ``W`` of shape ``(C_out, C_in)`` and ``g = dL/dv``, the gradient reaching input
``j`` is ``sum_i g_i W_ij``, so the local gradient from output ``i`` to input ``j`` is
``LG^{i->j} = g_i W_ij``. When the layer acts on extra leading dimensions (tokens, positions:
``a`` of shape ``(B, *, C_in)``), ``LG^{i->j}`` is the map ``g_i[*] W_ij`` over them and its norm
factorises::

    ||LG^{i->j}|| = |W_ij| * ||g_i||,     ||g_i|| = sqrt(sum_* g_i[*]^2)

hence ``Em_i = ||g_i|| * sum_j |W_ij|`` and ``Ab_j = sum_i |W_ij| ||g_i||`` (a matrix product), and the
batch sum of the norms is ``|W_ij| * sum_b ||g_i^b||``. Nothing of size ``B x C_out x C_in`` is formed.
As for convolutions, ``sum_i Em_i = sum_j Ab_j`` for every sample. Under ``definition="author_code"``
(:mod:`.author_code`): ``Em_i = sqrt(sum_j W_ij^2 ||g_i||^2) = ||g_i|| ||W_i||_2`` and ``Ab_i = ||g_i||``.

Which classes are linear layers is a declared list, :data:`LINEAR_TYPES`: ``nn.Linear``,
``NonDynamicallyQuantizableLinear`` (the out-projection class of ``nn.MultiheadAttention``; it only
marks the module for quantisation) and ``nn.LazyLinear`` (which becomes ``nn.Linear`` at its first
call). All three run ``F.linear(input, self.weight, self.bias)``. Other subclasses are not matched:
one that changes ``forward`` would get a wrong number, so it is reported as unsupported.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from ...errors import NndistError
from .convnd import working_dtype
from .types import LayerGradients

LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, NonDynamicallyQuantizableLinear, nn.LazyLinear)


def linear_local_gradient_norms(
    weight: Tensor, grad_output: Tensor, definition: str = "paper", *, batch: int | None = None
) -> LayerGradients:
    """Emission, absorption and norm sum for ``weight`` ``(C_out, C_in)`` and ``grad_output`` ``(B, *, C_out)``.

    Args:
        weight: ``W``.
        grad_output: ``G``; rows of one sample must be contiguous along the leading dimensions.
        definition: ``"paper"`` or ``"author_code"``.
        batch: The number of samples ``B`` when the leading dimension merges samples with other
            rows (``(B * windows, tokens, C_out)``, sample outermost); default ``grad_output.shape[0]``.
    """
    c_out = grad_output.shape[-1]
    B = grad_output.shape[0] if batch is None else batch
    gn = grad_output.reshape(B, -1, c_out).pow(2).sum(1).sqrt()  # (B, C_out)
    absw = weight.abs().to(gn.dtype)  # (C_out, C_in)
    norm_sum = absw * gn.sum(0)[:, None]  # (C_out, C_in)
    if definition == "paper":
        return LayerGradients(gn * absw.sum(1), gn @ absw, norm_sum)
    return LayerGradients(gn * absw.pow(2).sum(1).sqrt(), gn, norm_sum)


def linear_handler(module: nn.Module, input: Tensor, grad_output: Tensor, *, definition: str = "paper") -> LayerGradients:
    """Handler for the classes in :data:`LINEAR_TYPES`."""
    assert isinstance(module, nn.Linear)
    if grad_output.dim() < 2:
        raise NndistError(f"Linear got an unbatched input of shape {tuple(input.shape)}; pass a (B, ..., C_in) batch")
    g = grad_output.detach().to(working_dtype(grad_output))
    return linear_local_gradient_norms(module.weight.detach(), g, definition)
