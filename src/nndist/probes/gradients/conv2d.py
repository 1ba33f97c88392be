r"""Emission and absorption of a 2-D convolution, without materialising any local gradient.

This is the ``N = 2`` case of :mod:`.convnd`, written out. Per sample and per spatial axis (the
two axes are independent, so everything below is written for one axis and holds as a product
over both):

- ``W``: weight ``(C_out, C_in/groups, K1, K2)``; ``w = W[c1, c2]`` flattened over the taps.
- ``G = dL/dV``: ``(C_out, H2, W2)``; ``A``: the input, ``(C_in, H1, W1)``.
- ``s``, ``d``, ``pad``: stride, dilation and the *leading* padding of the axis (``'same'``
  pads ``d*(K-1)//2`` in front, the rest behind, as PyTorch does).

The local gradient (paper, Proposition 2) is the transposed convolution of ``G[c1]`` with
``W[c1, c2]``: output position ``o`` and tap ``t`` scatter ``G[c1, o] * W[c1, c2, t]`` onto the input
position ``p = o*s + t*d - pad``, kept only when ``0 <= p < H1`` (the crop)::

    LG^{c1->c2}[p] = sum_{o, t : o*s + t*d - pad = p} G[c1, o] W[c1, c2, t]

Its squared norm is a quadratic form in ``w``::

    ||LG^{c1->c2}||^2 = w^T Gamma_{c1} w,
    Gamma[t, t'] = sum_o m_t[o] G[o] G[o + delta],   delta = (t - t') d / s,

where ``m_t[o] = [0 <= o*s + t*d - pad < H1]`` is the crop mask of tap ``t`` and ``G`` is taken
as zero outside its grid. Two taps only meet on the same input position when ``(t - t') d`` is
a multiple of ``s``; otherwise ``Gamma[t, t'] = 0``. ``Gamma`` is symmetric: swapping ``t`` and
``t'`` and substituting ``o -> o + delta`` gives the same sum, because ``m_{t'}[o + delta] = m_t[o]``
(both say the same input position is inside the crop).

The mask is one everywhere except on a few border rows ``E`` (those where some tap falls into the
padding), so writing ``m_t = 1 - e_t`` and expanding over both axes (inclusion-exclusion)::

    Gamma = Full(delta) - sum_{r in E_h} e_th[r] Row_r(delta) - sum_{c in E_w} e_tw[c] Col_c(delta)
            + sum_{r, c} e_th[r] e_tw[c] G[r, c] G[(r, c) + delta]

- ``Full(delta) = sum_o G[o] G[o + delta]`` is the autocorrelation of ``G`` at the few lags the
  kernel needs (``(2K-1)^2`` for stride 1, fewer for strides > 1). For every (sample, channel)
  at once it is one depthwise convolution of ``G`` (zero padded by the largest lag) with ``G``
  itself as the kernel, ``groups = B*C_out``; the convolution's stride picks only the lags that
  can occur (multiples of ``d / gcd(d, s)``).
- ``Row_r(delta)`` is the same sum restricted to row ``r`` (a 1-D correlation of the border row
  with its neighbours), ``Col_c`` to column ``c``; they touch ``O(|E| * H2 * lags)`` numbers.

Each unordered tap pair is oriented so its lag has ``delta_h >= 0`` (symmetry above), and the
quadratic form over the ``T = #pairs`` upper-triangle entries (off-diagonals doubled) is one batched
matrix product over ``c1``: ``(C_out, B, T) @ (C_out, T, C_in/groups)``. Rounding can make a
vanishing form slightly negative, so it is clamped at zero before the square root.

Cost per layer: one depthwise correlation (``B*C_out*H2*W2*lags`` multiply-adds), the border
terms, and a ``C_out*B*T*C_in/groups`` matmul, against ``B*C_out*C_in*K1*K2*H2*W2`` for the
layer's own forward pass; the ``C_out x C_in x H1 x W1`` local gradients never exist.

Emission ``Em^{c1} = sum_{c2} ||LG^{c1->c2}||`` and absorption ``Ab^{c2} = sum_{c1} ||LG^{c1->c2}||``
are the row and column sums of the same ``(C_out, C_in)`` matrix of norms, so for every sample
``sum_{c1} Em^{c1} = sum_{c2} Ab^{c2}``: the paper's observation that a layer emits about as much
gradient as it absorbs is this identity (both sides count every channel pair once).
"""

from __future__ import annotations

from torch import Tensor, nn

from .convnd import check_conv, conv_handler, conv_local_gradient_sq_norms, leading_padding
from .reduce import grouped_result
from .types import LayerGradients

__all__ = ["check_conv2d", "conv2d_handler", "conv2d_local_gradient_norms", "grouped_result"]


def _padding(module: nn.Conv2d) -> tuple[int, int]:
    return leading_padding(module)  # type: ignore[return-value]


def check_conv2d(name: str, module: nn.Module) -> None:
    """Rejects convolutions whose local gradients are not defined by this kernel."""
    check_conv(name, module)


def conv2d_local_gradient_norms(
    weight: Tensor,
    grad_output: Tensor,
    input_hw: tuple[int, int],
    *,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> Tensor:
    """``||LG^{c1->c2}||`` for every sample and channel pair of a convolution.

    Args:
        weight: ``(C_out, C_in/groups, K1, K2)``.
        grad_output: ``G = dL/dV``, ``(B, C_out, H2, W2)``, each sample's own gradient.
        input_hw: ``(H1, W1)``, the input's spatial size.
        stride, padding, dilation, groups: as in the layer; ``padding`` is the leading padding.

    Returns:
        ``(C_out, B, C_in/groups)``: entry ``[c1, b, j]`` is the norm of the local gradient from
        output channel ``c1`` to input channel ``(c1 // (C_out/groups)) * C_in/groups + j``.
    """
    q = conv_local_gradient_sq_norms(
        weight, grad_output, input_hw, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    return q.sqrt_()


def conv2d_handler(module: nn.Module, input: Tensor, grad_output: Tensor, *, definition: str = "paper") -> LayerGradients:
    """Handler for :class:`torch.nn.Conv2d` (see the module docstring for the derivation)."""
    assert isinstance(module, nn.Conv2d)
    return conv_handler(module, input, grad_output, definition=definition)
