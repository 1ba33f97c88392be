"""Streaming, mergeable summaries of distributions with bounded memory.

A :class:`Summary` digests tensors of any size batch by batch (weights, features streamed over a
whole dataset, per-channel gradients) and keeps a small state: the count of finite values, their
exact moments (:mod:`nndist.stats.moments`), the counts of NaN, +Inf and -Inf (non-finite values
are counted and excluded from everything else), and a quantile sketch on fixed global bucket
edges (:mod:`nndist.stats.sketch`). Two summaries with the same accuracy merge exactly: counts
and buckets are integer additions, moments combine with the exact pairwise formulas.

Update paths (each fills the same state; which one runs depends only on the input):

* a float32 CPU batch of at least 4096 values (scalar summary, ``m <= 6``): one compiled pass
  (:mod:`nndist.stats.kernels`) for the extremes, the finiteness check, float64 power sums and
  the bucket counts;
* another finite float32 batch of a scalar summary: float32 shifted power sums and one bincount
  over the float32 key space (:func:`~nndist.stats.moments.float32_moments`);
* everything else (float64, integers, per-channel, NaN or Inf present): float64 chunks
  (:func:`~nndist.stats.moments.chunk_moments`) and a bincount over the chunk's key range.

Accuracy: float64 moments agree with numpy/scipy to about ``1e-12`` relative; the float32 paths'
guarantee is in :mod:`nndist.stats.moments`; quantiles are within ``bucket_accuracy`` (``1/129`` at
the default ``relative_accuracy=0.01``) of the order statistic; KS statistics are lower bounds
bracketed by :meth:`Summary.ks_normal_bounds`. min and max are always exact.

Cross-process use: :mod:`nndist.stats.sync` packs summaries into one float64 tensor and merges
them across ranks with one collective.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import NndistError
from . import kernels
from .moments import central_sums, chunk_moments, float32_moments, merge_moments
from .sketch import MAX_MANTISSA_BITS, MIN_ABS_FLOOR, Sketch, mantissa_bits

__all__ = ["SUMMARY_COLUMNS", "Summary", "SummaryError", "summarize"]

#: Columns of the summary tables (weights/features/gradients parquet), in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "n", "mean", "std", "min", "max", "skew", "kurtosis",
    "q01", "q05", "q25", "q50", "q75", "q95", "q99", "ks_normal", "nonfinite",
)
QUANTILE_COLUMNS: dict[str, float] = {"q01": 0.01, "q05": 0.05, "q25": 0.25, "q50": 0.50, "q75": 0.75, "q95": 0.95, "q99": 0.99}

STATE_FORMAT = "nndist.stats.Summary"
# 2: log-linear buckets from the float bit pattern (version 1 had ceil(log_gamma |v|) keys).
STATE_VERSION = 2
#: The (C,) arrays of the state and their dtypes, in the order of :meth:`Summary.state_dict` and of a pack.
STATE_ARRAYS: dict[str, type] = {
    "n": np.int64, "nan": np.int64, "posinf": np.int64, "neginf": np.int64, "zero": np.int64,
    "mean": np.float64, "m2": np.float64, "m3": np.float64, "m4": np.float64, "min": np.float64, "max": np.float64,
}

# Elements per chunk of the float64 path: big enough to amortise Python overhead, small enough
# that the float64 temporaries stay in cache and are reused by the allocator.
_CHUNK_ELEMENTS = 1 << 20
# Smallest float32 batch given to the compiled CPU kernel (below it, the kernel's fixed cost of
# zeroing its counters exceeds the torch passes).
_KERNEL_MIN_ELEMENTS = 1 << 12



class SummaryError(NndistError, ValueError):
    """A bad input to a summary (shape, mismatched accuracy or channels, bad state)."""


def _as_tensor(x: Any) -> torch.Tensor:
    """Converts an input to a real floating tensor without copying where possible."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiub":
            raise SummaryError(f"cannot summarise values of dtype {arr.dtype}: pass real numbers")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise SummaryError(f"cannot summarise complex tensor ({t.dtype}): pass its real part or abs()")
    if t.dtype in (torch.float64, torch.float32):
        return t
    if t.is_floating_point():
        return t.float()  # half/bfloat16: float32 holds them exactly
    return t.double()  # ints and bools: float64 holds int32 exactly


def _validated(channels: Any, relative_accuracy: Any, min_abs: Any) -> tuple[int | None, float, float, int]:
    """Checks the arguments of :class:`Summary`; returns (channels, alpha, min_abs, mantissa bits)."""
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1):
        raise SummaryError(f"channels must be None or a positive int, got {channels!r}")
    alpha = float(relative_accuracy)
    if not 0.0 < alpha < 1.0:
        raise SummaryError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
    min_abs = float(min_abs)
    if not (min_abs > 0.0 and math.isfinite(min_abs)):
        raise SummaryError(f"min_abs must be positive and finite, got {min_abs!r}")
    if min_abs < MIN_ABS_FLOOR:
        raise SummaryError(f"min_abs must be >= 2**-126 = {MIN_ABS_FLOOR:.6g} (float32's smallest normal number), got {min_abs!r}")
    m = mantissa_bits(alpha)
    if m > MAX_MANTISSA_BITS:
        raise SummaryError(f"relative_accuracy must be >= 1/(2**24 + 1) = {1 / (2.0**24 + 1):.6g} (float32 resolution), got {relative_accuracy!r}")
    return None if channels is None else int(channels), alpha, min_abs, m


class Summary:
    """Streaming, mergeable summary of one distribution or of C per-channel distributions.

    Example::

        s = Summary()
        for batch in loader:
            s.update(model(batch))              # any shape; all elements
        s.mean, s.std, s.quantile([0.05, 0.95]), s.rows()

        g = Summary(channels=64)
        g.update(per_sample_values)              # (N, 64): column c feeds channel c

    All statistics are numpy float64: a scalar for ``channels=None``, shape (C,) otherwise. An
    empty summary (or channel) gives NaN statistics.

    Args:
        channels: None for one summary over all elements, or C for C independent summaries fed
            by the columns of (N, C) inputs.
        relative_accuracy: ``alpha`` of the quantile sketch, in (0, 1).
        min_abs: values with ``|v| < min_abs`` go to the zero bucket.

    Raises:
        SummaryError: for channels < 1, alpha outside (0, 1) or min_abs not positive and finite.
    """

    def __init__(self, channels: int | None = None, *, relative_accuracy: float = 0.01, min_abs: float = 1e-12) -> None:
        channels, alpha, min_abs, m = _validated(channels, relative_accuracy, min_abs)
        self._channels, self._alpha, self._min_abs, self._m = channels, alpha, min_abs, m
        c = self._c
        self._n, self._nan, self._posinf, self._neginf = (np.zeros(c, dtype=np.int64) for _ in range(4))
        self._mean, self._m2, self._m3, self._m4 = (np.zeros(c) for _ in range(4))
        self._min, self._max = np.full(c, np.inf), np.full(c, -np.inf)
        self._sketch = Sketch(c, m, min_abs)

    # ------------------------------------------------------------------ configuration
    @property
    def _c(self) -> int:
        return 1 if self._channels is None else self._channels

    @property
    def _straddle(self) -> bool:
        return self._sketch.straddle

    channels = property(lambda self: self._channels, doc="None for a scalar summary, else the number of channels C.")
    relative_accuracy = property(lambda self: self._alpha, doc="``alpha``: quantiles are within this relative error of the order statistics.")
    min_abs = property(lambda self: self._min_abs, doc="Values with ``|v| < min_abs`` are counted in the zero bucket.")
    gamma = property(lambda self: 1.0 + 2.0**-self._m, doc="Largest ratio of consecutive bucket edges, ``1 + 2^-m``.")
    mantissa_bits = property(lambda self: self._m, doc="``m``: buckets split each octave into ``2^m`` equal parts.")

    @property
    def bucket_accuracy(self) -> float:
        """Guaranteed relative error of :meth:`quantile`, ``1 / (2^(m+1) + 1) <= relative_accuracy``."""
        return 1.0 / (2.0 ** (self._m + 1) + 1.0)

    def __repr__(self) -> str:
        ch = "" if self._channels is None else f"channels={self._channels}, "
        return f"Summary({ch}relative_accuracy={self._alpha}, min_abs={self._min_abs}; n={int(self._n.sum())})"

    # ------------------------------------------------------------------ update
    def update(self, x: torch.Tensor | np.ndarray | Any) -> Summary:
        """Adds the values of ``x`` to the summary.

        The per-element work runs in torch on the tensor's device (or in the compiled CPU pass);
        only the small per-batch results come back to the CPU state. See the module docstring for
        the paths and their accuracy.

        Args:
            x: torch tensor (any float dtype, any device), numpy array or nested sequence. For
                ``channels=None`` every element counts; for ``channels=C`` it must have shape
                (N, C) and column c feeds channel c.

        Returns:
            self, so calls can be chained.

        Raises:
            SummaryError: if ``x`` has the wrong shape for ``channels=C`` or is not real.
        """
        t = _as_tensor(x)
        if self._channels is None:
            t = t.reshape(-1)
            if t.numel() == 0 or self._update_float32(t):
                return self
            t = t.reshape(-1, 1)
        elif t.ndim != 2 or t.shape[1] != self._channels:
            raise SummaryError(
                f"Summary(channels={self._channels}).update expects shape (N, {self._channels}), "
                f"got {tuple(t.shape)}: reshape to (N, {self._channels}) (channels last)"
            )
        rows = max(1, _CHUNK_ELEMENTS // max(1, t.shape[1]))
        for start in range(0, t.shape[0], rows):
            self._update_chunk(t[start : start + rows])
        return self

    def _update_float32(self, t: torch.Tensor) -> bool:
        """The float32 paths of a scalar summary; False (nothing changed) if the batch needs float64."""
        if t.dtype != torch.float32:
            return False
        if t.numel() >= _KERNEL_MIN_ELEMENTS and self._m <= 6 and t.device.type == "cpu" and kernels.AVAILABLE:
            x = t.contiguous()
            result = kernels.power_sums_and_counts(x.numpy(), 23 - self._m, 9 + self._m)
            if result is not None:  # None: NaN or Inf present, which the float64 path masks
                sums, ref, lo, hi, counts = result
                self._merge_batch(t.numel(), central_sums(*sums.tolist(), t.numel(), ref), lo, hi)
                self._sketch.add_key_counts(x, counts)
                return True
        lo_t, hi_t = torch.aminmax(t)
        lo, hi = torch.stack([lo_t, hi_t]).tolist()  # the one sync; NaN propagates, Inf shows
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return False
        moments = float32_moments(t, lo, hi)
        if moments is None:
            return False
        self._merge_batch(t.numel(), moments, lo, hi)
        if self._m <= 6:
            self._sketch.add_float32(t)
        else:
            self._sketch.add_chunk(t.reshape(-1, 1), None, lo, hi)
        return True

    def _update_chunk(self, x: torch.Tensor) -> None:
        """Digests one (N, C) chunk on the float64 path."""
        finite, p = chunk_moments(x)
        self._nan, self._posinf, self._neginf = self._nan + p["nan"], self._posinf + p["posinf"], self._neginf + p["neginf"]
        self._merge_arrays(p["n"], (p["mean"], p["m2"], p["m3"], p["m4"]), p["min"], p["max"])
        has = p["n"] > 0
        if has.any():  # else nothing finite: no bucket to fill
            self._sketch.add_chunk(x, finite, float(p["min"][has].min()), float(p["max"][has].max()))

    def _merge_arrays(self, nb: np.ndarray, moments: Sequence[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> None:
        """Merges a batch's (C,) count, (mean, M2, M3, M4) and extremes into the state."""
        self._mean, self._m2, self._m3, self._m4 = merge_moments(self._n, (self._mean, self._m2, self._m3, self._m4), nb, tuple(moments))
        self._n = self._n + nb
        has = nb > 0
        self._min = np.where(has, np.minimum(self._min, lo), self._min)
        self._max = np.where(has, np.maximum(self._max, hi), self._max)

    def _merge_batch(self, n: int, moments: Sequence[float], lo: float, hi: float) -> None:
        """Merges one batch of a scalar summary: its count, (mean, M2, M3, M4) and extremes."""
        self._merge_arrays(np.array([n]), [np.array([v], dtype=np.float64) for v in moments], np.array([lo]), np.array([hi]))

    # ------------------------------------------------------------------ merge, copy, state
    def _check_compatible(self, other: Summary, what: str = "merge") -> None:
        if not isinstance(other, Summary):
            raise SummaryError(f"cannot {what} a Summary with {type(other).__name__}")
        if self._alpha != other._alpha or self._min_abs != other._min_abs:
            raise SummaryError(
                f"cannot {what} summaries with different bucket edges: relative_accuracy "
                f"{self._alpha} vs {other._alpha}, min_abs {self._min_abs} vs {other._min_abs}; "
                "create both with the same relative_accuracy and min_abs"
            )
        if self._channels != other._channels:
            raise SummaryError(f"cannot {what} summaries with different channels: {self._channels} vs {other._channels}")

    def merge(self, other: Summary) -> Summary:
        """Adds the state of ``other`` (a summary of disjoint data) into this one, in place.

        Counts and bucket counts add exactly (integers on shared global edges, any key ranges);
        min/max combine; the moments combine with the exact pairwise formulas of
        :func:`~nndist.stats.moments.merge_moments`, so merging chunk summaries in any order
        equals the one-shot summary to rounding.

        Raises:
            SummaryError: if the accuracy, ``min_abs`` or channels differ.
        """
        self._check_compatible(other)
        self._merge_arrays(other._n, (other._mean, other._m2, other._m3, other._m4), other._min, other._max)
        self._nan, self._posinf, self._neginf = self._nan + other._nan, self._posinf + other._posinf, self._neginf + other._neginf
        self._sketch.merge(other._sketch)
        return self

    def copy(self) -> Summary:
        """Returns an independent copy."""
        return Summary.from_state_dict(self.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """The full state as plain Python and numpy values (copies): the one serialisation.

        Returns:
            dict with ``format``, ``version``, ``channels``, ``relative_accuracy``, ``min_abs``,
            the (C,) arrays :data:`STATE_ARRAYS` (``n, nan, posinf, neginf, zero`` int64,
            ``mean, m2, m3, m4, min, max`` float64), and the stores ``neg_offset``/``neg`` and
            ``pos_offset``/``pos`` ((C, K) int64; column j is key offset + j).
        """
        sk = self._sketch
        state: dict[str, Any] = {"format": STATE_FORMAT, "version": STATE_VERSION, "channels": self._channels,
                                 "relative_accuracy": self._alpha, "min_abs": self._min_abs}
        state.update({name: (sk.zero if name == "zero" else getattr(self, "_" + name)).copy() for name in STATE_ARRAYS})
        state.update(neg_offset=int(sk.neg_off), neg=sk.neg.copy(), pos_offset=int(sk.pos_off), pos=sk.pos.copy())
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Summary:
        """Rebuilds a summary from :meth:`state_dict` output (arrays may be lists).

        Raises:
            SummaryError: if the dict is not a summary state or its arrays have wrong shapes.
        """
        if state.get("format") != STATE_FORMAT:
            raise SummaryError(
                f"not a Summary state (format={state.get('format')!r}, version={state.get('version')!r}); "
                f"expected format {STATE_FORMAT!r} version {STATE_VERSION}"
            )
        if state.get("version") != STATE_VERSION:
            raise SummaryError(
                f"Summary state version {state.get('version')!r} is not supported: this nndist reads "
                f"version {STATE_VERSION} only (the bucket layout changed); recompute the summary"
            )
        s = cls(state["channels"], relative_accuracy=state["relative_accuracy"], min_abs=state["min_abs"])
        sk = s._sketch
        try:
            for name, dtype in STATE_ARRAYS.items():
                value = np.array(state[name], dtype=dtype).reshape(s._c)
                setattr(sk, "zero", value) if name == "zero" else setattr(s, "_" + name, value)
            sk.neg_off, sk.neg = int(state["neg_offset"]), np.array(state["neg"], dtype=np.int64).reshape(s._c, -1)
            sk.pos_off, sk.pos = int(state["pos_offset"]), np.array(state["pos"], dtype=np.int64).reshape(s._c, -1)
        except (KeyError, ValueError) as exc:
            raise SummaryError(f"corrupt Summary state: {exc}") from exc
        return s

    def to_tensor(self) -> torch.Tensor:
        """Packs this summary into a flat float64 CPU tensor (see :func:`nndist.stats.sync.pack`)."""
        from .sync import pack  # sync builds on this class: imported here, not at the top

        return pack([self])

    @classmethod
    def from_tensor(cls, packed: torch.Tensor | np.ndarray) -> Summary:
        """Inverse of :meth:`to_tensor`.

        Raises:
            SummaryError: if the tensor does not hold exactly one packed summary.
        """
        from .sync import unpack  # sync builds on this class: imported here, not at the top

        out = unpack(packed)
        if len(out) != 1:
            raise SummaryError(f"expected one packed summary, found {len(out)}: use unpack()")
        return out[0]

    # ------------------------------------------------------------------ statistics
    def _out(self, values: np.ndarray) -> np.ndarray | np.float64:
        """Per-channel array -> numpy float64 scalar for scalar summaries."""
        values = np.asarray(values, dtype=np.float64)
        return values[0] if self._channels is None else values

    n = property(lambda self: self._out(self._n), doc="Number of finite values (as float64, like every statistic).")
    nan = property(lambda self: self._out(self._nan), doc="Number of NaN values seen.")
    posinf = property(lambda self: self._out(self._posinf), doc="Number of +Inf values seen.")
    neginf = property(lambda self: self._out(self._neginf), doc="Number of -Inf values seen.")
    nonfinite = property(lambda self: self._out(self._nan + self._posinf + self._neginf),
                         doc="Number of NaN, +Inf and -Inf values seen (excluded from all other statistics).")

    @property
    def mean(self) -> np.ndarray | np.float64:
        """Mean of the finite values (NaN if none)."""
        return self._out(np.where(self._n > 0, self._mean, np.nan))

    @property
    def var(self) -> np.ndarray | np.float64:
        """Population variance (ddof=0) of the finite values."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._out(np.where(self._n > 0, self._m2 / self._n, np.nan))

    @property
    def std(self) -> np.ndarray | np.float64:
        """Population standard deviation (ddof=0), as ``np.std``."""
        return np.sqrt(self.var)

    min = property(lambda self: self._out(np.where(self._n > 0, self._min, np.nan)), doc="Smallest finite value (NaN if none).")
    max = property(lambda self: self._out(np.where(self._n > 0, self._max, np.nan)), doc="Largest finite value (NaN if none).")

    def _degenerate(self) -> np.ndarray:
        # scipy's rule: a variance at the rounding level of the mean is treated as zero, so a
        # constant tensor gives NaN skew/kurtosis rather than rounding noise.
        m2 = np.where(self._n > 0, self._m2 / np.maximum(self._n, 1), 0.0)
        return (self._n == 0) | (m2 <= (np.finfo(np.float64).resolution * self._mean) ** 2)

    @property
    def skew(self) -> np.ndarray | np.float64:
        """Skewness ``m3 / m2^1.5`` (``scipy.stats.skew(bias=True)``); NaN if the variance is 0."""
        with np.errstate(divide="ignore", invalid="ignore"):
            g1 = np.sqrt(self._n.astype(np.float64)) * self._m3 / self._m2**1.5
        return self._out(np.where(self._degenerate(), np.nan, g1))

    @property
    def kurtosis(self) -> np.ndarray | np.float64:
        """Excess kurtosis ``m4 / m2^2 - 3`` (``scipy.stats.kurtosis(fisher=True, bias=True)``)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            g2 = self._n * self._m4 / self._m2**2 - 3.0
        return self._out(np.where(self._degenerate(), np.nan, g2))

    # ------------------------------------------------------------------ sketch views
    def histogram(self, channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Bucket counts over the non-empty range, on the fixed global edges.

        Bins are contiguous from the lowest to the highest non-empty bucket (empty buckets in
        between are included, with count 0); bin i spans ``edges[i]..edges[i+1]``. Histograms of
        summaries with the same ``relative_accuracy`` and ``min_abs`` share every common edge.

        Args:
            channel: for ``channels=C``, the channel to return; None returns all channels on their
                common range. Ignored (must be None or 0) for scalar summaries.

        Returns:
            (edges, counts): edges (m+1,) float64 (empty if no finite value), counts (m,) int64,
            or (C, m) for all channels. Counts sum to ``n``.

        Raises:
            SummaryError: if ``channel`` is out of range.
        """
        p_lo, counts = self._sketch.positions()
        if channel is not None:
            if not 0 <= channel < self._c:
                raise SummaryError(f"channel {channel} out of range for a summary with {self._c} channel(s)")
            counts = counts[channel]
            cols = np.flatnonzero(counts)
            if cols.size == 0:
                return np.zeros(0), np.zeros(0, dtype=np.int64)
            p_lo, counts = p_lo + int(cols[0]), counts[cols[0] : cols[-1] + 1]
        elif self._channels is None:
            counts = counts[0]
        if counts.shape[-1] == 0:
            return np.zeros(0), counts
        return self._sketch.edge(np.arange(p_lo - 1, p_lo + counts.shape[-1])), counts.copy()

    def quantile(self, q: float | Sequence[float] | np.ndarray) -> np.ndarray | np.float64:
        """Quantiles from the sketch, within :attr:`bucket_accuracy` of the order statistic.

        The bucket holding rank ``q (n - 1)`` (0-based: the order statistic ``x_(floor(q (n-1)))``)
        is found and its representative ``±2 lo hi / (lo + hi)`` returned, clipped to the exact
        [min, max] (within ``min_abs`` absolute in the zero bucket); ``q=0`` and ``q=1`` give
        min and max exactly.

        Args:
            q: a probability or a sequence of them, each in [0, 1].

        Returns:
            float64: scalar for scalar q and summary; (len(q),) for a sequence; with channels,
            (C,) or (C, len(q)). NaN where a channel is empty.

        Raises:
            SummaryError: if a q is outside [0, 1].
        """
        qa = np.asarray(q, dtype=np.float64)
        if qa.ndim > 1 or not np.all((qa >= 0) & (qa <= 1)):
            raise SummaryError(f"quantile q must be a number or a 1-D sequence in [0, 1], got {q!r}")
        out = self._sketch.quantiles(qa.reshape(-1), self._n, self._min, self._max)
        if qa.ndim == 0:
            out = out[:, 0]
        return out[0] if self._channels is None else out

    def cdf(self, x: float | Sequence[float] | np.ndarray) -> np.ndarray | np.float64:
        """Empirical CDF: exact at bucket edges, linear inside a bucket (off by at most its mass).

        Returns:
            float64 of x's shape, or (C,) + x's shape with channels; NaN for empty channels.
        """
        out = self._sketch.cdf(np.asarray(x, dtype=np.float64), self._n)
        return out[0] if self._channels is None else out

    def ks_normal_bounds(self) -> tuple[np.ndarray | np.float64, np.ndarray | np.float64]:
        """Lower and upper bounds of the exact KS statistic against N(mean, std^2); NaN where n = 0 or std = 0."""
        std = np.sqrt(np.where(self._n > 0, self._m2 / np.maximum(self._n, 1), 0.0))
        lower, upper = self._sketch.ks_normal_bounds(self._n, self._mean, std)
        return self._out(lower), self._out(upper)

    def ks_normal(self) -> np.ndarray | np.float64:
        """KS statistic against N(mean, std^2), evaluated at the bucket edges.

        A lower bound of ``scipy.stats.kstest(x, 'norm', args=(mean, std))``; the exact value is at
        most this plus the largest mass (of the data or of the normal) in one bucket. Data far from
        0 relative to its spread (mean 1e3, std 1) falls into a few wide buckets and the value is
        then meaningless: :meth:`ks_normal_bounds` shows the bracket.
        """
        return self.ks_normal_bounds()[0]

    def rows(self) -> list[dict[str, float | int]]:
        """One dict per channel (one for a scalar summary) with exactly :data:`SUMMARY_COLUMNS`.

        ``n`` and ``nonfinite`` are ints, everything else floats (NaN where undefined).
        """
        qs = np.asarray(self.quantile(list(QUANTILE_COLUMNS.values()))).reshape(self._c, -1)
        cols = {k: np.asarray(v).reshape(self._c) for k, v in (
            ("mean", self.mean), ("std", self.std), ("min", self.min), ("max", self.max),
            ("skew", self.skew), ("kurtosis", self.kurtosis), ("ks_normal", self.ks_normal()))}
        cols.update({name: qs[:, i] for i, name in enumerate(QUANTILE_COLUMNS)})
        nonfinite = self._nan + self._posinf + self._neginf
        return [
            {name: int(self._n[ch]) if name == "n" else int(nonfinite[ch]) if name == "nonfinite" else float(cols[name][ch])
             for name in SUMMARY_COLUMNS}
            for ch in range(self._c)
        ]


def summarize(x: torch.Tensor | np.ndarray | Any, **kwargs: Any) -> Summary:
    """Returns ``Summary(**kwargs).update(x)``.

    Args:
        x: values (see :meth:`Summary.update`).
        **kwargs: arguments of :class:`Summary` (``channels``, ``relative_accuracy``, ``min_abs``).
    """
    return Summary(**kwargs).update(x)
