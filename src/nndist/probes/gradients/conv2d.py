r"""Emission and absorption of a 2-D convolution, without materialising any local gradient.

Notation, per sample and per spatial axis (the two axes are independent, so everything below is
written for one axis and holds as a product over both):

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

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import NndistError
from .types import LayerGradients


@dataclass(frozen=True)
class _Axis:
    """One spatial axis: border rows, their exclusion masks and the lag grid."""

    border: tuple[int, ...]  # output rows where some tap lands in the padding
    excluded: tuple[tuple[bool, ...], ...]  # (K, len(border)): tap t drops border row r
    step: int  # lags are multiples of step
    max_lag: int  # largest |lag|


def _axis(n_in: int, n_out: int, k: int, s: int, d: int, pad: int) -> _Axis:
    lo = [max(0, -((t * d - pad) // s)) for t in range(k)]  # ceil((pad - t*d) / s)
    hi = [min(n_out, (n_in - 1 + pad - t * d) // s + 1) for t in range(k)]
    border = tuple(o for o in range(n_out) if any(o < lo[t] or o >= hi[t] for t in range(k)))
    excluded = tuple(tuple(o < lo[t] or o >= hi[t] for o in border) for t in range(k))
    g = math.gcd(d, s)
    tap_step = s // g  # tap differences that meet on the same input position
    step = d // g
    max_lag = ((k - 1) // tap_step) * step
    return _Axis(border, excluded, step, max_lag)


@dataclass(frozen=True)
class _Plan:
    """Everything about a layer's geometry that does not depend on the data (cached).

    ``Gamma = features @ mix``: the features of one (sample, channel) are the full
    autocorrelation at every lag, then the border-row and border-column correlations and the
    corner products that the crop removes; ``mix`` (``F x T``) adds them with the right signs.
    """

    h: _Axis
    w: _Axis
    tap_a: Tensor  # (T,) first tap of each oriented pair (flat index th*K2 + tw)
    tap_b: Tensor  # (T,) second tap
    coef: Tensor  # (T,) 1 on the diagonal, 2 off it
    mix: Tensor  # (F, T)
    row_a: Tensor  # (R,) border row r of each row correlation ...
    row_b: Tensor  # (R,) ... correlated with row r + lag_h
    col_a: Tensor  # (Cc,) border column c of each column correlation ...
    col_b: Tensor  # (Cc,) ... correlated with column c + lag_w
    corner_a: Tensor  # (P,) flat positions r*W2 + c ...
    corner_b: Tensor  # (P,) ... times (r + lag_h)*W2 + c + lag_w


@lru_cache(maxsize=256)
def _plan(
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pad: tuple[int, int],
) -> _Plan:
    (k1, k2), (sh, sw), (dh, dw) = kernel, stride, dilation
    H, W = out_hw
    ah = _axis(in_hw[0], H, k1, sh, dh, pad[0])
    aw = _axis(in_hw[1], W, k2, sw, dw, pad[1])
    n_lag_h, n_lag_w = 2 * ah.max_lag // ah.step + 1, 2 * aw.max_lag // aw.step + 1
    taps = [(th, tw) for th in range(k1) for tw in range(k2)]
    pairs = []  # (a, b, coef, lag_h, lag_w), oriented so that lag_h >= 0
    for i, (th, tw) in enumerate(taps):
        for j in range(i, len(taps)):
            uh, uw = taps[j]
            if ((th - uh) * dh) % sh or ((tw - uw) * dw) % sw:
                continue  # these taps never land on the same input position
            lag_h, lag_w = (th - uh) * dh // sh, (tw - uw) * dw // sw
            a, b = i, j
            if lag_h < 0 or (lag_h == 0 and lag_w < 0):
                a, b, lag_h, lag_w = j, i, -lag_h, -lag_w
            pairs.append((a, b, 1.0 if i == j else 2.0, lag_h, lag_w))
    # Which border correlations are needed (a term vanishes when the neighbour is off the grid).
    row_keys: dict[tuple[int, int], int] = {}
    col_keys: dict[tuple[int, int], int] = {}
    corner_keys: dict[tuple[int, int, int, int], int] = {}
    terms: list[list[tuple[str, object, float]]] = []
    for a, _, _, lag_h, lag_w in pairs:
        th, tw = taps[a]
        t: list[tuple[str, object, float]] = [("full", (lag_h, lag_w), 1.0)]
        rows = [r for k, r in enumerate(ah.border) if ah.excluded[th][k] and r + lag_h < H]
        cols = [c for k, c in enumerate(aw.border) if aw.excluded[tw][k] and 0 <= c + lag_w < W]
        for r in rows:
            t.append(("row", row_keys.setdefault((r, lag_h), len(row_keys)), -1.0))
        for c in cols:
            t.append(("col", col_keys.setdefault((c, lag_w), len(col_keys)), -1.0))
        for r in rows:
            for c in cols:
                t.append(("corner", corner_keys.setdefault((r, c, lag_h, lag_w), len(corner_keys)), 1.0))
        terms.append(t)
    n_full = n_lag_h * n_lag_w
    off_row = n_full
    off_col = off_row + len(row_keys) * n_lag_w
    off_corner = off_col + len(col_keys) * n_lag_h
    mix = torch.zeros(off_corner + len(corner_keys), len(pairs), dtype=torch.float64)
    for p, ((_, _, _, lag_h, lag_w), t) in enumerate(zip(pairs, terms)):
        ih, iw = (lag_h + ah.max_lag) // ah.step, (lag_w + aw.max_lag) // aw.step
        for kind, key, sign in t:
            if kind == "full":
                f = ih * n_lag_w + iw
            elif kind == "row":
                f = off_row + key * n_lag_w + iw  # type: ignore[operator]
            elif kind == "col":
                f = off_col + key * n_lag_h + ih  # type: ignore[operator]
            else:
                f = off_corner + key  # type: ignore[operator]
            mix[f, p] += sign
    long = lambda xs: torch.tensor(list(xs), dtype=torch.long)  # noqa: E731
    return _Plan(
        h=ah,
        w=aw,
        tap_a=long(p[0] for p in pairs),
        tap_b=long(p[1] for p in pairs),
        coef=torch.tensor([p[2] for p in pairs], dtype=torch.float64),
        mix=mix,
        row_a=long(r for r, _ in row_keys),
        row_b=long(r + lh for r, lh in row_keys),
        col_a=long(c for c, _ in col_keys),
        col_b=long(c + lw for c, lw in col_keys),
        corner_a=long(r * W + c for r, c, _, _ in corner_keys),
        corner_b=long((r + lh) * W + c + lw for r, c, lh, lw in corner_keys),
    )


def _features(g: Tensor, plan: _Plan) -> Tensor:
    """The correlations that ``plan.mix`` combines into ``Gamma``: ``(B, C_out, F)``."""
    B, C, H, W = g.shape
    n = B * C
    ah, aw = plan.h, plan.w
    stride = (ah.step, aw.step)
    dev = g.device
    # Full autocorrelation at every lag: a depthwise correlation of G with itself (G as kernel).
    full = F.conv2d(
        g.reshape(1, n, H, W), g.reshape(n, 1, H, W), stride=stride, padding=(ah.max_lag, aw.max_lag), groups=n
    )
    feats = [full.reshape(B, C, -1)]
    R, Cc, P = len(plan.row_a), len(plan.col_a), len(plan.corner_a)
    if R:  # sum_ow G[r, ow] G[r + lag_h, ow + lag_w] at every lag_w: 1-D correlations of rows
        a = g.index_select(2, plan.row_a.to(dev)).reshape(n * R, 1, W)
        b = g.index_select(2, plan.row_b.to(dev)).reshape(1, n * R, W)
        row = F.conv1d(b, a, stride=aw.step, padding=aw.max_lag, groups=n * R)
        feats.append(row.reshape(B, C, -1))
    if Cc:  # sum_oh G[oh, c] G[oh + lag_h, c + lag_w] at every lag_h: 1-D correlations of columns
        a = g.index_select(3, plan.col_a.to(dev)).transpose(2, 3).reshape(n * Cc, 1, H)
        b = g.index_select(3, plan.col_b.to(dev)).transpose(2, 3).reshape(1, n * Cc, H)
        col = F.conv1d(b, a, stride=ah.step, padding=ah.max_lag, groups=n * Cc)
        feats.append(col.reshape(B, C, -1))
    if P:
        flat = g.reshape(B, C, H * W)
        feats.append(flat.index_select(2, plan.corner_a.to(dev)) * flat.index_select(2, plan.corner_b.to(dev)))
    return torch.cat(feats, 2) if len(feats) > 1 else feats[0]


def _padding(module: nn.Conv2d) -> tuple[int, int]:
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0)
        # 'same': PyTorch pads d*(k-1)//2 in front and the rest behind
        return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))  # type: ignore[return-value]
    return tuple(module.padding)  # type: ignore[return-value]


def check_conv2d(name: str, module: nn.Module) -> None:
    """Rejects convolutions whose local gradients are not defined by this kernel."""
    assert isinstance(module, nn.Conv2d)
    if module.padding_mode != "zeros":
        raise NndistError(
            f"Conv2d {name!r} uses padding_mode={module.padding_mode!r}; emission/absorption supports "
            "only 'zeros': leave the layer out with layers=[...]"
        )


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
    B, C_out, H2, W2 = grad_output.shape
    k1, k2 = weight.shape[-2:]
    plan = _plan(tuple(input_hw), (H2, W2), (k1, k2), tuple(stride), tuple(dilation), tuple(padding))
    g = grad_output.contiguous()
    dev, dt = g.device, g.dtype
    feats = _features(g, plan).permute(1, 0, 2)  # (C_out, B, F)
    w = weight.reshape(C_out, -1, k1 * k2).to(dt)  # (C_out, C_in/g, K1K2)
    coef = plan.coef.to(device=dev, dtype=dt)
    ww = w[:, :, plan.tap_a.to(dev)] * w[:, :, plan.tap_b.to(dev)] * coef  # (C_out, C_in/g, T)
    # q = Gamma . ww with Gamma = feats @ mix, folded: feats @ (mix @ ww^T)
    mixed = torch.matmul(plan.mix.to(device=dev, dtype=dt), ww.transpose(1, 2))  # (C_out, F, C_in/g)
    q = torch.bmm(feats, mixed)  # (C_out, B, C_in/g)
    return q.clamp_min_(0).sqrt_()


def conv2d_handler(module: nn.Module, input: Tensor, grad_output: Tensor) -> LayerGradients:
    """Handler for :class:`torch.nn.Conv2d` (see the module docstring for the derivation)."""
    assert isinstance(module, nn.Conv2d)
    if grad_output.dim() != 4:
        raise NndistError(f"Conv2d got an unbatched input of shape {tuple(input.shape)}; pass a (B, C, H, W) batch")
    dtype = grad_output.dtype if grad_output.dtype in (torch.float32, torch.float64) else torch.float32
    norms = conv2d_local_gradient_norms(
        module.weight.detach(),
        grad_output.detach().to(dtype),
        tuple(input.shape[-2:]),  # type: ignore[arg-type]
        stride=tuple(module.stride),  # type: ignore[arg-type]
        padding=_padding(module),
        dilation=tuple(module.dilation),  # type: ignore[arg-type]
        groups=module.groups,
    )  # (C_out, B, C_in/g)
    return grouped_result(norms, module.groups)


def grouped_result(norms: Tensor, groups: int) -> LayerGradients:
    """Emission, absorption and the batch sum from ``(C_out, B, C_in/groups)`` block-diagonal norms."""
    C_out, B, cin_g = norms.shape
    emission = norms.sum(2).T  # (B, C_out)
    absorption = norms.reshape(groups, C_out // groups, B, cin_g).sum(1).permute(1, 0, 2).reshape(B, -1)
    blocks = norms.sum(1).reshape(groups, C_out // groups, cin_g)  # (g, C_out/g, C_in/g)
    norm_sum = norms.new_zeros(groups, C_out // groups, groups, cin_g)
    idx = torch.arange(groups, device=norms.device)
    norm_sum[idx, :, idx, :] = blocks
    return LayerGradients(emission, absorption.contiguous(), norm_sum.reshape(C_out, groups * cin_g))
