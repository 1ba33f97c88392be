r"""Emission and absorption of 1-, 2- and 3-D convolutions, without forming any local gradient.

One kernel serves ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d``: the 2-D derivation of :mod:`.conv2d`
generalises axis by axis.

Notation, per sample; ``N`` spatial axes, each with its own kernel size ``K_a``, stride ``s_a``,
dilation ``d_a`` and *leading* padding ``pad_a`` (``'same'`` pads ``d*(K-1)//2`` in front and the
rest behind, as PyTorch does):

- ``W``: weight ``(C_out, C_in/groups, K_1, ..., K_N)``; ``w = W[c1, c2]`` flattened over the taps
  ``t = (t_1, ..., t_N)``.
- ``G = dL/dV``: ``(C_out, n_1, ..., n_N)``; ``A``: the input, ``(C_in, m_1, ..., m_N)``.

The local gradient (paper, Proposition 2, per axis) is the transposed convolution of ``G[c1]``
with ``W[c1, c2]``: output position ``o`` and tap ``t`` scatter ``G[c1, o] W[c1, c2, t]`` onto the input
position ``p_a = o_a s_a + t_a d_a - pad_a`` on every axis, kept only when ``0 <= p_a < m_a`` (the crop).
Its squared norm is a quadratic form in ``w``::

    ||LG^{c1->c2}||^2 = w^T Gamma_{c1} w,
    Gamma[t, t'] = sum_o m_t[o] G[o] G[o + delta],   delta_a = (t_a - t'_a) d_a / s_a,

with ``m_t[o] = prod_a [0 <= o_a s_a + t_a d_a - pad_a < m_a]`` the crop mask of tap ``t`` and ``G``
zero outside its grid. Two taps meet on one input position only when every ``(t_a - t'_a) d_a`` is
a multiple of ``s_a``; otherwise ``Gamma[t, t'] = 0``. ``Gamma`` is symmetric (substitute
``o -> o + delta``: ``m_{t'}[o + delta] = m_t[o]``, both say the same input position is kept).

Per axis the mask is one except on a few border positions ``E_a`` (where some tap falls into the
padding): ``m_t = prod_a (1 - e_{t_a})``. Expanding the product over the axes (inclusion-exclusion)::

    Gamma[t, t'] = sum_{S subset of axes} (-1)^{|S|} sum_{r_S in E_S, e_t[r_S] = 1}
                   sum_{o_R} G[r_S, o_R] G[r_S + delta_S, o_R + delta_R]      (R = the other axes)

- ``S = {}``: the full autocorrelation of ``G`` at the few lags the kernel needs, for every
  (sample, channel) at once one depthwise ``N``-D convolution of ``G`` (zero padded by the largest
  lag) with ``G`` itself as the kernel, ``groups = B*C_out``; its stride picks only the lags that
  can occur (multiples of ``d_a / gcd(d_a, s_a)``).
- ``S`` a proper subset: the same correlation over the axes ``R`` only, between the border slice
  ``r_S`` and its neighbour ``r_S + delta_S`` (a ``|R|``-D depthwise convolution, one group per
  slice). For 2-D these are the border rows and columns; for 3-D faces and edges.
- ``S`` = all axes: products of two numbers of ``G`` (the corners).

Each unordered tap pair is oriented so that its lag is lexicographically non-negative (symmetry),
and the quadratic form over the ``T = #pairs`` upper-triangle entries (off-diagonals doubled) is one
batched matrix product over ``c1``: ``(C_out, B, F) @ (C_out, F, C_in/groups)`` after folding the
signs of the expansion (``mix``, ``F x T``) into the weights. Rounding can make a vanishing form
slightly negative, so it is clamped at zero.

For ``N = 1`` the expansion has the full term and the border products only; for ``N = 2`` it is the
walk-through in :mod:`.conv2d` (full, border rows, border columns, corners); for ``N = 3``: full,
border planes (``conv2d`` of each with its neighbour), border lines (``conv1d``) and corners.

Cost per layer: one depthwise correlation (``B*C_out*prod(n)*lags`` multiply-adds), the border
terms, and a ``C_out*B*F*C_in/groups`` matmul, against ``B*C_out*C_in*prod(K)*prod(n)`` for the
layer's own forward pass; the ``C_out x C_in x prod(m)`` local gradients never exist.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import NndistError
from .reduce import compiled_serves, pair_result
from .types import LayerGradients

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass(frozen=True)
class _Axis:
    """One spatial axis: border positions, their exclusion masks and the lag grid."""

    border: tuple[int, ...]  # output positions where some tap lands in the padding
    excluded: tuple[tuple[bool, ...], ...]  # (K, len(border)): tap t drops border position r
    step: int  # lags are multiples of step
    max_lag: int  # largest |lag|

    @property
    def n_lags(self) -> int:
        return 2 * self.max_lag // self.step + 1


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
class _Subset:
    """The correction terms of one set ``S`` of axes held at a border position (inclusion-exclusion)."""

    axes: tuple[int, ...]  # S
    rest: tuple[int, ...]  # R, correlated at every lag (empty: products of two numbers)
    idx_a: Tensor  # (K_S,) flat index of each border position r_S (over the S axes, or all if R is empty)
    idx_b: Tensor  # (K_S,) ... of its neighbour r_S + delta_S


@dataclass(frozen=True)
class _Plan:
    """Everything about a layer's geometry that does not depend on the data (cached).

    ``Gamma = features @ mix``: the features of one (sample, channel) are the full autocorrelation
    at every lag, then for each subset ``S`` (in ``subsets`` order) the correlations of the border
    slices; ``mix`` (``F x T``) adds them with the signs of the inclusion-exclusion.
    """

    axes: tuple[_Axis, ...]
    tap_a: Tensor  # (T,) first tap of each oriented pair (flat, row-major over the axes)
    tap_b: Tensor  # (T,) second tap
    coef: Tensor  # (T,) 1 on the diagonal, 2 off it
    mix: Tensor  # (F, T)
    subsets: tuple[_Subset, ...]
    # per feature: the output position held on each axis (-1: summed over the axis) and the lag
    # delta, so that the feature is sum over o (held coordinates fixed) of G[o] G[o + delta]
    boxes: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]


@lru_cache(maxsize=256)
def _plan(
    in_size: tuple[int, ...],
    out_size: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pad: tuple[int, ...],
) -> _Plan:
    N = len(kernel)
    axes = tuple(_axis(in_size[a], out_size[a], kernel[a], stride[a], dilation[a], pad[a]) for a in range(N))
    taps = list(itertools.product(*(range(k) for k in kernel)))
    pairs = []  # (a, b, coef, lag), oriented so that the lag is lexicographically >= 0
    for i, t in enumerate(taps):
        for j in range(i, len(taps)):
            u = taps[j]
            if any(((t[a] - u[a]) * dilation[a]) % stride[a] for a in range(N)):
                continue  # these taps never land on the same input position
            lag = tuple((t[a] - u[a]) * dilation[a] // stride[a] for a in range(N))
            a_, b_ = i, j
            if lag < (0,) * N:
                a_, b_, lag = j, i, tuple(-x for x in lag)
            pairs.append((a_, b_, 1.0 if i == j else 2.0, lag))
    subsets = [s for size in range(1, N + 1) for s in itertools.combinations(range(N), size)]
    keys: list[dict[tuple[tuple[int, ...], tuple[int, ...]], int]] = [{} for _ in subsets]
    terms: list[list[tuple[int, int, float]]] = []  # per pair: (subset index or -1, key, sign)
    for a_, _, _, lag in pairs:
        t = taps[a_]
        # border positions of each axis that tap t drops and whose neighbour is on the grid
        cand = [
            [r for k, r in enumerate(axes[a].border) if axes[a].excluded[t[a]][k] and 0 <= r + lag[a] < out_size[a]]
            for a in range(N)
        ]
        pt: list[tuple[int, int, float]] = [(-1, 0, 1.0)]
        for si, s in enumerate(subsets):
            sign = -1.0 if len(s) % 2 else 1.0
            lag_s = tuple(lag[a] for a in s)
            for r in itertools.product(*(cand[a] for a in s)):
                pt.append((si, keys[si].setdefault((r, lag_s), len(keys[si])), sign))
        terms.append(pt)
    lag_shape = tuple(ax.n_lags for ax in axes)
    offsets, n_feat = [], math.prod(lag_shape)
    for si, s in enumerate(subsets):
        offsets.append(n_feat)
        n_feat += len(keys[si]) * math.prod(lag_shape[a] for a in range(N) if a not in s)
    mix = torch.zeros(n_feat, len(pairs), dtype=torch.float64)
    for p, ((_, _, _, lag), pt) in enumerate(zip(pairs, terms)):
        li = [(lag[a] + axes[a].max_lag) // axes[a].step for a in range(N)]
        for si, key, sign in pt:
            if si < 0:
                f = _ravel(li, lag_shape)
            else:
                rest = [a for a in range(N) if a not in subsets[si]]
                f = offsets[si] + key * math.prod(lag_shape[a] for a in rest) + _ravel(
                    [li[a] for a in rest], tuple(lag_shape[a] for a in rest)
                )
            mix[f, p] += sign
    boxes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    lag_of = lambda a, i: i * axes[a].step - axes[a].max_lag  # noqa: E731
    for li in itertools.product(*(range(n) for n in lag_shape)):
        boxes.append(((-1,) * N, tuple(lag_of(a, i) for a, i in enumerate(li))))
    for si, s in enumerate(subsets):
        rest = [a for a in range(N) if a not in s]
        for r, lag_s in keys[si]:  # dicts keep insertion order: the key's index
            for li in itertools.product(*(range(lag_shape[a]) for a in rest)):
                fixed, delta = [-1] * N, [0] * N
                for a, ra, la in zip(s, r, lag_s):
                    fixed[a], delta[a] = ra, la
                for a, i in zip(rest, li):
                    delta[a] = lag_of(a, i)
                boxes.append((tuple(fixed), tuple(delta)))
    assert len(boxes) == n_feat
    long = lambda xs: torch.tensor(list(xs), dtype=torch.long)  # noqa: E731
    kept = []
    for si, s in enumerate(subsets):
        if not keys[si]:
            continue
        rest = tuple(a for a in range(N) if a not in s)
        grid = tuple(out_size[a] for a in (s if rest else range(N)))

        def flat(r: tuple[int, ...], lag_s: tuple[int, ...], shift: bool, s: tuple[int, ...] = s) -> int:
            pos = [ri + (li if shift else 0) for ri, li in zip(r, lag_s)]
            return _ravel(pos, grid)

        kept.append(
            _Subset(
                axes=s,
                rest=rest,
                idx_a=long(flat(r, ls, False) for r, ls in keys[si]),
                idx_b=long(flat(r, ls, True) for r, ls in keys[si]),
            )
        )
    return _Plan(
        axes=axes,
        tap_a=long(p[0] for p in pairs),
        tap_b=long(p[1] for p in pairs),
        coef=torch.tensor([p[2] for p in pairs], dtype=torch.float64),
        mix=mix,
        subsets=tuple(kept),
        boxes=tuple(boxes),
    )


def _ravel(index: list[int], shape: tuple[int, ...]) -> int:
    flat = 0
    for i, n in zip(index, shape):
        flat = flat * n + i
    return flat


def _take(g: Tensor, axes: tuple[int, ...], rest: tuple[int, ...], idx: Tensor) -> Tensor:
    """Slices of ``g`` ``(B, C, *spatial)`` at flat positions ``idx`` of the ``axes``: ``(B, C, K, *rest)``."""
    if not rest:
        return g.reshape(g.shape[0], g.shape[1], -1).index_select(2, idx)
    if len(axes) == 1:
        x = g.index_select(2 + axes[0], idx)
        return x if axes[0] == 0 else x.movedim(2 + axes[0], 2)
    moved = g.movedim(tuple(2 + a for a in axes), tuple(range(2, 2 + len(axes))))
    return moved.reshape(g.shape[0], g.shape[1], -1, *(g.shape[2 + a] for a in rest)).index_select(2, idx)


def _features(g: Tensor, plan: _Plan) -> Tensor:
    """The correlations that ``plan.mix`` combines into ``Gamma``: ``(B, C_out, F)``."""
    B, C = g.shape[:2]
    sp = tuple(g.shape[2:])
    n = B * C
    steps = tuple(ax.step for ax in plan.axes)
    lags = tuple(ax.max_lag for ax in plan.axes)
    dev = g.device
    # Full autocorrelation at every lag: a depthwise correlation of G with itself (G as kernel).
    full = _CONV[len(sp)](g.reshape(1, n, *sp), g.reshape(n, 1, *sp), stride=steps, padding=lags, groups=n)
    feats = [full.reshape(B, C, -1)]
    for sub in plan.subsets:
        ia, ib = sub.idx_a.to(dev), sub.idx_b.to(dev)
        a = _take(g, sub.axes, sub.rest, ia)
        b = _take(g, sub.axes, sub.rest, ib)
        if not sub.rest:  # corners: one product each
            feats.append(a * b)
            continue
        k = len(ia)
        rs = tuple(sp[r] for r in sub.rest)
        corr = _CONV[len(rs)](
            b.reshape(1, n * k, *rs),
            a.reshape(n * k, 1, *rs),
            stride=tuple(steps[r] for r in sub.rest),
            padding=tuple(lags[r] for r in sub.rest),
            groups=n * k,
        )
        feats.append(corr.reshape(B, C, -1))
    return torch.cat(feats, 2) if len(feats) > 1 else feats[0]


def conv_local_gradient_sq_norms(
    weight: Tensor,
    grad_output: Tensor,
    input_size: tuple[int, ...],
    *,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int = 1,
    compiled: bool | None = None,
) -> Tensor:
    """``||LG^{c1->c2}||^2`` for every sample and channel pair of an ``N``-D convolution.

    Args:
        weight: ``(C_out, C_in/groups, *K)``.
        grad_output: ``G = dL/dV``, ``(B, C_out, *n)``, each sample's own gradient.
        input_size: ``m``, the input's spatial size.
        stride, padding, dilation: per axis, as in the layer; ``padding`` is the leading padding.
        groups: as in the layer (read off ``weight``'s shape; kept for a common kernel signature).
        compiled: compute the correlations by the compiled pass (:mod:`.compiled`) or by torch
            convolutions; None: the compiled pass where it serves ``G`` (float32/float64 on the
            CPU). Both give the same numbers (tested in float64).

    Returns:
        ``(C_out, B, C_in/groups)``, clamped at zero: entry ``[c1, b, j]`` is the squared norm of the
        local gradient from output channel ``c1`` to input channel
        ``(c1 // (C_out/groups)) * C_in/groups + j``.
    """
    geometry = (
        tuple(input_size), tuple(grad_output.shape[2:]), tuple(weight.shape[2:]), tuple(stride), tuple(dilation),
        tuple(padding),
    )
    g = grad_output.contiguous()
    if compiled is None:
        compiled = compiled_serves(g)
    if compiled:
        return _sq_norms_compiled(weight, g, geometry)
    return _sq_norms_torch(weight, g, _plan(*geometry))


def _tap_products(w: Tensor, plan: _Plan) -> Tensor:
    """``ww[c1, j, pair] = coef * w[tap_a] * w[tap_b]``: ``(C_out, C_in/g, T)``, so that ``q = Gamma . ww``."""
    dev = w.device
    return w[:, :, plan.tap_a.to(dev)] * w[:, :, plan.tap_b.to(dev)] * plan.coef.to(device=dev, dtype=w.dtype)


def _sq_norms_torch(weight: Tensor, g: Tensor, plan: _Plan) -> Tensor:
    B, C_out = g.shape[:2]
    dev, dt = g.device, g.dtype
    feats = _features(g, plan).permute(1, 0, 2)  # (C_out, B, F)
    P = math.prod(weight.shape[2:])
    w = weight.reshape(C_out, -1, P).to(dt)  # (C_out, C_in/g, P)
    n_feat, T, cin_g = plan.mix.shape[0], plan.mix.shape[1], w.shape[1]
    if B * (n_feat * T + P * P * cin_g) < n_feat * T * cin_g + B * n_feat * cin_g:
        # Few samples (one per pass under author_code): form Gamma (C_out, B, P, P) and apply it to W,
        # rather than fold the weights into mix, whose cost does not shrink with the batch.
        gamma = torch.matmul(feats, plan.mix.to(device=dev, dtype=dt))  # (C_out, B, T)
        full = gamma.new_zeros(C_out, B, P, P)
        ta, tb = plan.tap_a.to(dev), plan.tap_b.to(dev)
        full[:, :, ta, tb] = gamma
        full[:, :, tb, ta] = gamma
        wt = w.transpose(1, 2).unsqueeze(1)  # (C_out, 1, P, C_in/g)
        return (torch.matmul(full, wt) * wt).sum(2).clamp_min_(0)  # (C_out, B, C_in/g)
    ww = _tap_products(w, plan)  # (C_out, C_in/g, T)
    # q = Gamma . ww with Gamma = feats @ mix, folded: feats @ (mix @ ww^T)
    mixed = torch.matmul(plan.mix.to(device=dev, dtype=dt), ww.transpose(1, 2))  # (C_out, F, C_in/g)
    q = torch.bmm(feats, mixed)  # (C_out, B, C_in/g)
    return q.clamp_min_(0)


@dataclass(frozen=True)
class _Compiled:
    """A plan's programs for the compiled passes: only the features ``mix`` uses.

    Two routes to ``q = Gamma . ww``: the pass returns the used features and the weights are folded
    into the mix (``mixed[c1, f, j] = sum_t mix[f, t] ww[c1, j, t]``), or the pass applies the mix
    and returns ``Gamma``, met by the tap products ``ww`` themselves.
    """

    plan: _Plan
    program: object  # compiled.Boxes
    mix: Tensor  # (F_used, T) float64: the rows of plan.mix that are used
    features: object  # compiled.Combine: the identity (the pass returns the features)
    gamma: object  # compiled.Combine: mix (the pass returns Gamma's upper triangle)
    mixed_taps: object  # compiled.TapForms: rows of mix (the weights folded into the mix)
    taps: object  # compiled.TapForms: the identity (ww)

    def folds_weights(self, batch: int) -> bool:
        """Whether ``B x F_used`` features times the mixed weights (``F_used x T x C_in/g`` to mix,
        per output channel) cost less than ``B x T`` Gamma entries times the tap products."""
        n_used, T = self.mix.shape
        return batch * (T - n_used) > n_used * T


@lru_cache(maxsize=256)
def _compiled(*geometry: tuple[int, ...]) -> _Compiled:
    from . import compiled as cc

    plan = _plan(*geometry)
    used = (plan.mix != 0).any(1).nonzero()[:, 0]
    program = cc.box_program(
        geometry[1], tuple(ax.max_lag for ax in plan.axes), [plan.boxes[i] for i in used.tolist()]
    )
    mix = plan.mix[used]
    T = mix.shape[1]
    taps = (plan.tap_a, plan.tap_b, plan.coef)
    return _Compiled(
        plan, program, mix, cc.Combine.of(torch.eye(len(used), dtype=torch.float64)), cc.Combine.of(mix),
        cc.TapForms.of(mix, *taps), cc.TapForms.of(torch.eye(T, dtype=torch.float64), *taps),
    )


def _sq_norms_compiled(weight: Tensor, g: Tensor, geometry: tuple[tuple[int, ...], ...]) -> Tensor:
    from . import compiled as cc

    cp = _compiled(*geometry)
    B, C_out = g.shape[:2]
    w = weight.reshape(C_out, -1, math.prod(weight.shape[2:])).to(g.dtype)  # (C_out, C_in/g, P)
    if cp.folds_weights(B):
        # Many samples: the pass returns the used features, and the weights are folded into the
        # mix once per call (C_out x F_used x C_in/g), so the product per sample is F_used long.
        feats = cc.correlate(g, cp.program, cp.features)  # (C_out, B, F_used)
        mixed = cc.fold_taps(w, cp.mixed_taps)  # (C_out, F_used, C_in/g)
    else:  # few samples: the pass applies the mix itself and returns Gamma
        feats = cc.correlate(g, cp.program, cp.gamma)  # (C_out, B, T)
        mixed = cc.fold_taps(w, cp.taps)  # (C_out, T, C_in/g)
    return torch.bmm(feats, mixed).clamp_min_(0)  # (C_out, B, C_in/g)


def leading_padding(module: nn.Module) -> tuple[int, ...]:
    """The padding in front of each spatial axis (``'same'``: ``d*(k-1)//2``, the rest behind)."""
    padding = module.padding  # type: ignore[attr-defined]
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * len(module.kernel_size)  # type: ignore[attr-defined]
        return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))  # type: ignore[attr-defined]
    return tuple(padding)


def check_conv(name: str, module: nn.Module) -> None:
    """Rejects (transposed) convolutions whose local gradients are not defined by these kernels."""
    mode = getattr(module, "padding_mode", "zeros")
    if mode != "zeros":
        raise NndistError(
            f"{type(module).__name__} {name!r} uses padding_mode={mode!r}; emission/absorption supports "
            "only 'zeros': leave the layer out with layers=[...]"
        )


def working_dtype(t: Tensor) -> torch.dtype:
    """float32 or float64: half precision is measured in float32."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def run_conv_kernel(
    kernel: Callable[..., Tensor], module: nn.Module, input: Tensor, grad_output: Tensor, padding: tuple[int, ...], definition: str
) -> LayerGradients:
    """Calls a (transposed) convolution ``kernel`` with the module's geometry and reduces its ``q``."""
    n = len(module.kernel_size)  # type: ignore[arg-type]
    if grad_output.dim() != n + 2:
        raise NndistError(
            f"{type(module).__name__} got an unbatched input of shape {tuple(input.shape)}; pass a (B, C, ...) batch"
        )
    g = grad_output.detach().to(working_dtype(grad_output))
    q = kernel(
        module.weight.detach(),
        g,
        tuple(input.shape[2:]),
        stride=tuple(module.stride),  # type: ignore[arg-type]
        padding=padding,
        dilation=tuple(module.dilation),  # type: ignore[arg-type]
        groups=module.groups,
    )  # (C_out, B, C_in/g)
    return pair_result(q, module.groups, definition, g)  # type: ignore[arg-type]


def conv_handler(module: nn.Module, input: Tensor, grad_output: Tensor, *, definition: str = "paper") -> LayerGradients:
    """Handler for ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d`` (see the module docstring)."""
    assert isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
    return run_conv_kernel(conv_local_gradient_sq_norms, module, input, grad_output, leading_padding(module), definition)
