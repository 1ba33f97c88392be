r"""Compiled CPU pass (numba) for the correlations of the convolution kernel (:mod:`.convnd`).

Every feature of a convolution's plan is a sum of lagged products of one ``(sample, channel)``
plane of ``G`` over a box: ``sum_o G[o] G[o + delta]``, ``o`` running over the whole grid on some
axes and held at a border position on the others (``_Plan.boxes``). In torch these are a depthwise
convolution of ``G`` with itself (``groups = B*C_out``, which oneDNN serves slowly) and a few
small gathers and convolutions for the borders, each with its own temporary tensors. Here one
compiled pass reads each plane once into a zero-padded scratch buffer and computes every feature
from it, on all threads, without temporaries:

- The plane (an ``N``-D grid, seen as 3-D with leading axes of size one) is copied into a buffer in
  which axis ``a`` is followed by ``max_lag_a`` zeros (``n_a + max_lag_a`` positions per row, rows per
  plane, planes). A product whose partner ``o + delta`` falls off the grid then reads one of those
  zeros, so every feature is a plain sum of ``buf[i] * buf[i + off]`` over the flat indices ``i`` of
  its box, with ``off = sum_a delta_a * stride_a``; only features with a lexicographically
  non-negative lag are used (the plan orients every tap pair that way), so ``off >= 0`` and only
  trailing zeros are needed.
- A summed axis directly inside another summed axis is merged with it: the zeros between rows
  contribute nothing, so the full autocorrelation at one lag is a single contiguous dot product
  over the buffer (vectorised), a border row is one contiguous run, a border column one strided
  run. Each feature is ``(start, count, stride, inner, off)``: ``count`` runs of ``inner``
  contiguous products, ``stride`` apart.
- The features are then combined by a sparse matrix (compressed by output column) into the
  kernel's output per ``(sample, channel)``: either ``Gamma``'s upper triangle (the plan's ``mix``)
  or the used features themselves (identity), whichever makes the following matrix product
  cheaper.

Only features that ``mix`` uses are computed (for a 3x3 stride-1 layer: 13 lags of the full
autocorrelation and a few border sums, against the 25 lags of the depthwise convolution).
Accumulation is in the working dtype, as the convolution it replaces; float64 inputs give float64
sums (the exactness tests). The torch path of :mod:`.convnd` stays for other devices and as the
twin this pass is tested against (``tests/probes/test_gradients_compiled.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...threads import parallel_threads

try:  # pragma: no cover - exercised by the import itself
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    numba = None

__all__ = ["AVAILABLE", "LANES", "Boxes", "Combine", "TapForms", "box_program", "correlate", "fold_taps", "paper_statistics"]

AVAILABLE = numba is not None


LANES = 4
"""Features computed together from one run of the buffer (one read of ``buf[i]``, four partners)."""


@dataclass(frozen=True)
class Boxes:
    """The flat-buffer program of one plan's used features (data independent; cached with the plan).

    Features that run over the same indices (same ``start, count, stride, inner``) and differ only in
    their offset are computed together, :data:`LANES` at a time: ``groups[g]`` is ``start, count,
    stride, inner`` and the offsets, ``targets[g]`` the feature each offset's sum goes to (unused
    lanes repeat the first offset and go to the spare feature ``n_feat``).
    """

    shape3: tuple[int, int, int]  # the output grid seen as 3-D
    strides: tuple[int, int, int]  # buffer strides of the three axes
    buffer: int  # buffer length (the zeros past the last plane included)
    n_feat: int
    groups: np.ndarray  # (G, 4 + LANES) uint64
    targets: np.ndarray  # (G, LANES) uint64


def box_program(out_size: tuple[int, ...], max_lags: tuple[int, ...], boxes) -> Boxes:
    """Flat-buffer program of ``boxes`` (``(held position or -1 per axis, lag)`` per feature).

    Args:
        out_size: ``G``'s spatial size (``N <= 3`` axes).
        max_lags: the largest ``|lag|`` per axis (the zeros that follow each axis).
        boxes: the features to compute, each ``(fixed, delta)`` with ``delta`` lexicographically >= 0.
    """
    pad = 3 - len(out_size)
    n = (1,) * pad + tuple(out_size)
    p = (0,) * pad + tuple(max_lags)
    lp = tuple(n[a] + p[a] for a in range(3))
    st = (lp[1] * lp[2], lp[2], 1)
    runs: dict[tuple[int, int, int, int], list[tuple[int, int]]] = {}
    end = (n[0] + p[0]) * st[0]
    for f, (fixed, delta) in enumerate(boxes):
        fixed = (-1,) * pad + tuple(fixed)
        delta = (0,) * pad + tuple(delta)
        start = 0
        loops: list[list[int]] = []  # [count, stride, axis]
        for a in range(3):
            if fixed[a] >= 0:
                start += fixed[a] * st[a]
            elif loops and loops[-1][2] == a - 1:  # merge with the enclosing summed axis
                loops[-1] = [(loops[-1][0] - 1) * lp[a] + n[a], st[a], a]
            else:
                loops.append([n[a], st[a], a])
        if not loops:
            count, stride, inner = 1, 0, 1
        elif len(loops) == 1:
            count, stride, inner = (1, 0, loops[0][0]) if loops[0][1] == 1 else (loops[0][0], loops[0][1], 1)
        else:
            assert len(loops) == 2 and loops[1][1] == 1
            count, stride, inner = loops[0][0], loops[0][1], loops[1][0]
        off = sum(d * s for d, s in zip(delta, st))
        assert off >= 0, "features are oriented to lexicographically non-negative lags"
        runs.setdefault((start, count, stride, inner), []).append((off, f))
        end = max(end, start + (count - 1) * stride + inner + off)
    groups, targets = [], []
    for run, offs in runs.items():
        for i in range(0, len(offs), LANES):
            lane = offs[i : i + LANES]
            lane += [(lane[0][0], len(boxes))] * (LANES - len(lane))
            groups.append((*run, *(o for o, _ in lane)))
            targets.append(tuple(f for _, f in lane))
    return Boxes(
        n, st, end, len(boxes),  # type: ignore[arg-type]
        np.array(groups, dtype=np.uint64).reshape(-1, 4 + LANES),
        np.array(targets, dtype=np.uint64).reshape(-1, LANES),
    )


if AVAILABLE:

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def _planes(flat, lo, hi, n_chan, shape3, st0, st1, groups, targets, indptr, fidx, fval, zero, buf, feat, out):  # pragma: no cover - compiled
        # Planes lo..hi-1 of flat (P, prod(n)), plane p = b * n_chan + c; out: (n_chan, B, K). Every
        # index is a uint64: numba then knows it is non-negative and drops the wraparound test of
        # negative indices, which would otherwise stop the dot products from vectorising.
        n0, n1, n2 = shape3
        one = numba.uint64(1)
        for p in range(lo, hi):
            plane = flat[p]
            for z in range(n0):
                for y in range(n1):
                    base = z * st0 + y * st1
                    src = (z * n1 + y) * n2
                    for x in range(n2):  # a row, vectorised (a running source index kept it scalar)
                        buf[base + x] = plane[src + x]
            for gi in range(numba.uint64(groups.shape[0])):
                start = groups[gi, 0]
                count = groups[gi, 1]
                stride = groups[gi, 2]
                inner = groups[gi, 3]
                o0 = groups[gi, 4]
                o1 = groups[gi, 5]
                o2 = groups[gi, 6]
                o3 = groups[gi, 7]
                a0 = zero
                a1 = zero
                a2 = zero
                a3 = zero
                if inner == one:  # a strided run (a border column): no vector loop to set up per step
                    for k in range(count):
                        i = start + k * stride
                        x = buf[i]
                        a0 += x * buf[i + o0]
                        a1 += x * buf[i + o1]
                        a2 += x * buf[i + o2]
                        a3 += x * buf[i + o3]
                else:
                    for k in range(count):
                        b0 = start + k * stride
                        for j in range(b0, b0 + inner):  # vectorised (reassociation allowed)
                            x = buf[j]
                            a0 += x * buf[j + o0]
                            a1 += x * buf[j + o1]
                            a2 += x * buf[j + o2]
                            a3 += x * buf[j + o3]
                feat[targets[gi, 0]] = a0
                feat[targets[gi, 1]] = a1
                feat[targets[gi, 2]] = a2
                feat[targets[gi, 3]] = a3
            b = p // n_chan
            c = p - b * n_chan
            for k in range(numba.uint64(indptr.size - 1)):
                acc = zero
                for e in range(indptr[k], indptr[k + one]):
                    acc += fval[e] * feat[fidx[e]]
                out[c, b, k] = acc

    @numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def _kernel(flat, n_chan, shape3, st0, st1, buflen, groups, targets, n_feat, indptr, fidx, fval, zero, chunks, out):  # pragma: no cover - compiled
        # The work of each chunk is a plain compiled call: loops inside a prange body are compiled
        # by the parfor pass, which measured 3x slower on these loops.
        P = flat.shape[0]
        per = (P + chunks - 1) // chunks
        for ch in numba.prange(chunks):
            buf = np.zeros(buflen, dtype=flat.dtype)  # the zeros between rows are never written
            feat = np.empty(n_feat + 1, dtype=flat.dtype)  # the last one takes the unused slots
            lo = numba.uint64(min(P, ch * per))
            hi = numba.uint64(min(P, (ch + 1) * per))
            _planes(flat, lo, hi, numba.uint64(n_chan), shape3, st0, st1, groups, targets, indptr, fidx, fval, zero, buf, feat, out)


@dataclass(frozen=True)
class Combine:
    """A sparse ``(F_used, K)`` matrix, compressed by column: output ``k`` of a plane is
    ``sum_e values[e] * feature[index[e]]`` over ``e`` in ``indptr[k] : indptr[k + 1]``."""

    indptr: np.ndarray  # (K + 1,) uint64
    index: np.ndarray  # (nnz,) uint64
    values: dict[np.dtype, np.ndarray]  # per working dtype, (nnz,)

    @property
    def size(self) -> int:
        return self.indptr.size - 1

    @classmethod
    def of(cls, matrix: Tensor) -> Combine:
        cols = matrix.to(torch.float64).T.contiguous().numpy()  # (K, F_used)
        nz = cols != 0
        indptr = np.concatenate([[0], np.cumsum(nz.sum(1))]).astype(np.uint64)
        index = np.nonzero(nz)[1].astype(np.uint64)
        vals = cols[nz]
        return cls(indptr, index, {np.dtype(np.float64): vals, np.dtype(np.float32): vals.astype(np.float32)})


def correlate(g: Tensor, program: Boxes, combine: Combine, out: Tensor | None = None) -> Tensor:
    """``features(G) @ combine`` for every ``(sample, channel)`` plane, as ``(C, B, K)``.

    Args:
        g: ``G`` ``(B, C, *n)``, float32 or float64, on the CPU.
        program: :func:`box_program` of the used features (``F_used`` of them).
        combine: the ``(F_used, K)`` matrix (``mix`` restricted to the used features, or the identity).
        out: optional ``(C, B, K)`` contiguous buffer of ``g``'s dtype, written over.
    """
    B, C = g.shape[:2]
    planes = g.detach().contiguous().reshape(B * C, -1).numpy()
    dt = planes.dtype
    if out is None:
        out = torch.empty(C, B, combine.size, dtype=g.dtype)
    u = np.uint64
    with parallel_threads() as threads:
        _kernel(
            planes, C, tuple(u(n) for n in program.shape3), u(program.strides[0]), u(program.strides[1]),
            program.buffer, program.groups, program.targets, program.n_feat,
            combine.indptr, combine.index, combine.values[dt], dt.type(0), threads if B * C >= 4 * threads else 1, out.numpy(),
        )
    return out


@dataclass(frozen=True)
class TapForms:
    """Rows of weighted tap products, compressed by row: row ``r`` of ``fold_taps`` is
    ``sum_e values[e] * w[tap_a[e]] * w[tap_b[e]]`` over ``e`` in ``indptr[r] : indptr[r + 1]``."""

    indptr: np.ndarray  # (R + 1,) uint64
    tap_a: np.ndarray  # (nnz,) uint64
    tap_b: np.ndarray  # (nnz,) uint64
    values: dict[np.dtype, np.ndarray]  # per working dtype, (nnz,)

    @property
    def size(self) -> int:
        return self.indptr.size - 1

    @classmethod
    def of(cls, matrix: Tensor, tap_a: Tensor, tap_b: Tensor, coef: Tensor) -> TapForms:
        """Rows of ``matrix @ diag(coef)`` (``(R, T)``) over the pairs ``(tap_a[t], tap_b[t])``."""
        m = (matrix.to(torch.float64) * coef.to(torch.float64)).numpy()
        rows, cols = np.nonzero(m)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m.shape[0]))]).astype(np.uint64)
        vals = m[rows, cols]
        return cls(
            indptr, tap_a.numpy()[cols].astype(np.uint64), tap_b.numpy()[cols].astype(np.uint64),
            {np.dtype(np.float64): vals, np.dtype(np.float32): vals.astype(np.float32)},
        )


if AVAILABLE:

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def _fold(w, indptr, tap_a, tap_b, values, zero, out):  # pragma: no cover - compiled
        # w: (C_out, J, P) weights; out: (C_out, R, J), out[c, r, j] = sum_e v_e w[c, j, a_e] w[c, j, b_e]
        C, J, P = w.shape
        R = numba.uint64(indptr.size - 1)
        one = numba.uint64(1)
        wt = np.empty((P, J), dtype=w.dtype)  # one output channel's weights, taps first
        for c in range(numba.uint64(C)):
            for j in range(numba.uint64(J)):
                for t in range(numba.uint64(P)):
                    wt[t, j] = w[c, j, t]
            for r in range(R):
                for j in range(numba.uint64(J)):
                    out[c, r, j] = zero
                for e in range(indptr[r], indptr[r + one]):
                    v = values[e]
                    a = tap_a[e]
                    b = tap_b[e]
                    for j in range(numba.uint64(J)):
                        out[c, r, j] += v * wt[a, j] * wt[b, j]

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def _paper(q, cout_g, zero, emission, absorption, norm_sum):  # pragma: no cover - compiled
        # q: (C_out, B, J) squared norms, replaced by their square roots; emission (B, C_out),
        # absorption (B, C_in) and norm_sum (C_out, C_in) start at zero
        C, B, J = q.shape
        for c in range(numba.uint64(C)):
            first = (c // numba.uint64(cout_g)) * numba.uint64(J)  # the group's first input channel
            for b in range(numba.uint64(B)):
                s = zero
                for j in range(numba.uint64(J)):
                    x = q[c, b, j]
                    if x < zero:  # rounding of a vanishing form (NaN passes through)
                        x = zero
                    x = np.sqrt(x)
                    q[c, b, j] = x
                    s += x
                    absorption[b, first + j] += x
                    norm_sum[c, first + j] += x
                emission[b, c] = s


def fold_taps(weight: Tensor, forms: TapForms) -> Tensor:
    """``out[c1, r, j] = sum_e values[e] W[c1, j, tap_a[e]] W[c1, j, tap_b[e]]``: ``(C_out, R, C_in/g)``.

    Args:
        weight: ``(C_out, C_in/g, P)`` (taps flattened), float32 or float64, on the CPU.
        forms: the rows (:class:`TapForms`).
    """
    w = weight.detach().contiguous()
    dt = w.numpy().dtype
    out = torch.empty(w.shape[0], forms.size, w.shape[1], dtype=w.dtype)
    _fold(w.numpy(), forms.indptr, forms.tap_a, forms.tap_b, forms.values[dt], dt.type(0), out.numpy())
    return out


def paper_statistics(sq_norms: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Emission ``(B, C_out)``, absorption ``(B, C_in)`` and the batch sum ``(C_out, C_in)`` of the norms,
    in one pass over ``q = ||LG||^2`` ``(C_out, B, C_in/groups)`` (CPU, contiguous), whose entries
    are replaced by the norms (negative rounding clamped at zero)."""
    C_out, B, cin_g = sq_norms.shape
    q = sq_norms.numpy()
    dt = q.dtype
    emission = torch.empty(B, C_out, dtype=sq_norms.dtype)
    absorption = torch.zeros(B, groups * cin_g, dtype=sq_norms.dtype)
    norm_sum = torch.zeros(C_out, groups * cin_g, dtype=sq_norms.dtype)
    _paper(q, C_out // groups, dt.type(0), emission.numpy(), absorption.numpy(), norm_sum.numpy())
    return emission, absorption, norm_sum
