r"""Emission and absorption of transposed convolutions (``nn.ConvTranspose1d/2d/3d``).

Notation, per sample and per spatial axis (the axes are independent; everything holds as a
product over them): weight ``W`` ``(C_in, C_out/groups, K...)``; input ``A`` ``(C_in, m)``; output
``V`` and ``G = dL/dV`` ``(C_out, n)`` with ``n = (m - 1) s - 2 pad + d (K - 1) + op + 1`` for stride
``s``, padding ``pad``, dilation ``d`` and output padding ``op`` (read off the shapes, so a call with
``output_size=`` is handled too).

The forward scatters input position ``i`` through tap ``t`` onto output position
``o = i s + t d - pad`` (kept when ``0 <= o < n``): ``V[c1, o] = sum_{c2, i, t} A[c2, i] W[c2, c1, t]``.
Hence the gradient reaching input channel ``c2`` is a sum over output channels of *strided
correlations*, and the local gradient from ``c1`` to ``c2`` is one of them::

    LG^{c1->c2}[i] = sum_t G~[c1, i s + t d] W[c2, c1, t],   0 <= i < m,

where ``G~`` is ``G`` padded by ``pad`` in front and ``pad - op`` behind (a negative amount crops:
output positions past the last scatter target receive no input and pass no gradient back).
Summed over ``c1`` this is autograd's ``dL/dA[c2]``.

With ``U[i, t] = G~[c1, i s + t d]`` (the ``prod(K)`` strided windows of ``G``, an unfold) the squared
norm is a quadratic form in ``w = W[c2, c1]``::

    ||LG^{c1->c2}||^2 = w^T Gamma_{c1} w,   Gamma_{c1} = U^T U   (prod(K) x prod(K), per sample)

Unlike the forward convolution, taps of different phase ``t d mod s`` meet here, so ``Gamma`` is a
dense Gram matrix; it is formed from the unfold directly, over its ``T = P(P+1)/2`` upper-triangle
entries (``P = prod(K)``, off-diagonals doubled), in chunks of output channels so the unfold stays
small, and the form is one batched matrix product ``(C_out, B, T) @ (C_out, T, C_in/groups)``.

Cost: ``B * C_out * prod(m) * T`` multiply-adds for the Gram matrices (the layer's own forward is
``B * C_in * C_out/groups * prod(K) * prod(m)``) and memory ``prod(K)`` times one chunk of ``G``; the
``C_out x C_in x prod(m)`` local gradients never exist.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convnd import run_conv_kernel
from .types import LayerGradients

_CHUNK_ELEMENTS = 1 << 24  # cap on the unfold of one chunk of output channels


def _windows(g: Tensor, input_size: tuple[int, ...], kernel: tuple[int, ...], stride, padding, dilation) -> Tensor:
    """``U`` ``(B, C, prod(m), prod(K))``: ``G~[c, i s + t d]`` for every input position ``i`` and tap ``t``."""
    N = len(kernel)
    out = g.shape[2:]
    pads: list[int] = []
    for a in reversed(range(N)):  # F.pad lists the last axis first
        op = out[a] - ((input_size[a] - 1) * stride[a] - 2 * padding[a] + dilation[a] * (kernel[a] - 1) + 1)
        pads += [padding[a], padding[a] - op]
    u = F.pad(g, pads)
    for a in range(N):
        span = dilation[a] * (kernel[a] - 1) + 1
        u = u.unfold(2 + a, span, stride[a])[..., :: dilation[a]]  # appends the tap axis
    B, C = g.shape[:2]
    return u.reshape(B, C, math.prod(input_size), math.prod(kernel))


def conv_transpose_local_gradient_sq_norms(
    weight: Tensor,
    grad_output: Tensor,
    input_size: tuple[int, ...],
    *,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int = 1,
) -> Tensor:
    """``||LG^{c1->c2}||^2`` for every sample and channel pair of a transposed convolution.

    Args:
        weight: ``(C_in, C_out/groups, *K)``.
        grad_output: ``G``, ``(B, C_out, *n)``.
        input_size: ``m``, the input's spatial size (the output padding follows from ``n`` and ``m``).
        stride, padding, dilation: per axis, as in the layer.
        groups: as in the layer.

    Returns:
        ``(C_out, B, C_in/groups)``, clamped at zero: entry ``[c1, b, j]`` is the squared norm of the
        local gradient from output channel ``c1`` to input channel ``(c1 // (C_out/groups)) * C_in/groups + j``.
    """
    B, C_out = grad_output.shape[:2]
    kernel = tuple(weight.shape[2:])
    P = math.prod(kernel)
    cin_g, cout_g = weight.shape[0] // groups, weight.shape[1]
    dt = grad_output.dtype
    # w[c1, j, t] = W[group(c1) * cin_g + j, c1 mod cout_g, t]
    w = weight.to(dt).reshape(groups, cin_g, cout_g, P).permute(0, 2, 1, 3).reshape(C_out, cin_g, P)
    ia, ib = torch.triu_indices(P, P, device=grad_output.device)
    coef = torch.where(ia == ib, 1.0, 2.0).to(dt)
    ww = w[:, :, ia] * w[:, :, ib] * coef  # (C_out, C_in/g, T)
    L = math.prod(input_size)
    step = max(1, _CHUNK_ELEMENTS // max(1, B * L * P))
    q = grad_output.new_empty(C_out, B, cin_g)
    for c0 in range(0, C_out, step):
        c1 = min(C_out, c0 + step)
        u = _windows(grad_output[:, c0:c1], input_size, kernel, stride, padding, dilation)  # (B, c, L, P)
        u = u.permute(1, 0, 2, 3).reshape((c1 - c0) * B, L, P)
        gram = torch.bmm(u.transpose(1, 2), u)[:, ia, ib].reshape(c1 - c0, B, -1)  # (c, B, T)
        q[c0:c1] = torch.bmm(gram, ww[c0:c1].transpose(1, 2))
    return q.clamp_min_(0)


def conv_transpose_handler(
    module: nn.Module, input: Tensor, grad_output: Tensor, *, definition: str = "paper"
) -> LayerGradients:
    """Handler for ``nn.ConvTranspose1d``, ``nn.ConvTranspose2d`` and ``nn.ConvTranspose3d``."""
    assert isinstance(module, nn.modules.conv._ConvTransposeNd)
    padding = tuple(module.padding)  # type: ignore[arg-type]
    return run_conv_kernel(conv_transpose_local_gradient_sq_norms, module, input, grad_output, padding, definition)
