"""Partials of many tensors on their own device, moved to the host once.

:meth:`Summary.update` reads a batch's extremes on the host before it summarises it (one sync
per call). A training monitor summarises a hundred tensors per logging step; on a GPU that is a
hundred syncs, each waiting for the queue to drain. :class:`DevicePartials` instead reduces each
tensor to its partial (:mod:`.partials`) with device ops only, keeps the partials on the device,
and :meth:`~DevicePartials.collect` moves all of them to the host in one transfer per device
(two when there are per-channel entries: their shared key range decides the size of their
counts, so the ranges come first). Nothing here reads a device value on the host: no
``.item()``, ``.tolist()``, ``bool(tensor)``, data-dependent shapes, ``bincount`` or
``nonzero`` (which sync on CUDA); counts come from a sort and a ``searchsorted`` against fixed
bin edges, which need neither atomics nor the host.

Three kinds of entry:

* :meth:`~DevicePartials.add`: a scalar summary of one tensor; adding the same key again (the
  micro-batches of one step) accumulates. Counts cover the whole key space (``2^(9+m)`` keys).
* :meth:`~DevicePartials.add_group`: scalar summaries of many tensors at once: they are
  concatenated and reduced by segment (``index_add_``), so a hundred small parameters cost a few
  kernel launches instead of a few thousand. Tensors at or above :data:`GROUP_LIMIT` values get
  entries of their own (one segment would put all their values on one accumulator).
* :meth:`~DevicePartials.add_channels`: one summary per channel of one dimension. The int16
  keys are kept until :meth:`~DevicePartials.collect` (half the memory of float32 values), where
  the channels' common key range, known from the first transfer, sizes their counts.

Accuracy: power sums in float64 about a per-entry reference (the first batch's mean), so
moments agree with :meth:`Summary.update` on the same values in float64 to about ``1e-12``
relative; counts, extremes and non-finite counts are exact (the tests compare both).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .kernels import HI16
from .partials import FIELDS, KeySpace, channel_summary, whole_summary
from .summary import Summary

__all__ = ["DTYPES", "GROUP_LIMIT", "DevicePartials", "keys16"]

#: Tensors with at least this many values are reduced on their own, not as a segment of a group.
GROUP_LIMIT = 1 << 16
#: Values per chunk of the float64 temporaries.
CHUNK = 1 << 22


def keys16(space: KeySpace, x: torch.Tensor) -> torch.Tensor:
    """int16 signed keys (see :mod:`.partials`) of contiguous float32 ``x``, zero bucket at key 0."""
    hi = x.view(torch.int16)[..., HI16::2]
    k = (hi >> (7 - space.m)) & (space.nbins - 1)
    return torch.where(x.abs() < space.t32, 0, k)


#: Dtypes this path takes (float32 holds float16 and bfloat16 exactly); others go to ``Summary.update``.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _as_float32(x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in DTYPES:
        raise ValueError(f"device partials take {', '.join(map(str, DTYPES))}, got {x.dtype}")
    x = x.detach()
    return (x if x.dtype == torch.float32 else x.float()).contiguous()


@dataclass
class _Group:
    """Partials of T tensors (segments) on one device; ``counts`` is (T * nbins,)."""

    keys: list[Hashable]
    totals: list[int]
    n: torch.Tensor
    nan: torch.Tensor
    posinf: torch.Tensor
    s: torch.Tensor  # (4, T) power sums about ref
    ref: torch.Tensor | None
    lo: torch.Tensor
    hi: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def empty(cls, keys: list[Hashable], nbins: int, device: torch.device) -> _Group:
        t = len(keys)
        z = torch.zeros(t, dtype=torch.int64, device=device)
        return cls(keys, [0] * t, z, z.clone(), z.clone(), torch.zeros(4, t, dtype=torch.float64, device=device), None,
                   torch.full((t,), math.inf, dtype=torch.float64, device=device),
                   torch.full((t,), -math.inf, dtype=torch.float64, device=device),
                   torch.zeros(t * nbins, dtype=torch.int64, device=device))

    def fields(self) -> torch.Tensor:
        ref = self.ref if self.ref is not None else torch.zeros_like(self.lo)
        return torch.stack([self.n.double(), self.nan.double(), self.posinf.double(), *self.s, ref, self.lo, self.hi])


@dataclass
class _Channels:
    """Per-channel partials of one key: (C,) fields and the int16 keys of every batch."""

    key: Hashable
    channels: int
    total: int = 0  # values per channel
    parts: _Group | None = None  # fields of C segments (counts unused)
    keys: list[torch.Tensor] = field(default_factory=list)  # (A, C, B) int16
    kmin: torch.Tensor | None = None
    kmax: torch.Tensor | None = None


def _segment_sums(v: torch.Tensor, seg: torch.Tensor | None, t: int, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    if dims is not None:
        return v.sum(dims)
    if seg is None:
        return v.sum().reshape(1)
    return torch.zeros(t, dtype=v.dtype, device=v.device).index_add_(0, seg, v)


def _segment_extreme(v: torch.Tensor, seg: torch.Tensor | None, t: int, op: str, dims: tuple[int, ...] | None) -> torch.Tensor:
    if dims is not None:
        return v.amin(dims) if op == "amin" else v.amax(dims)
    if seg is None:
        return (v.amin() if op == "amin" else v.amax()).reshape(1)
    init = math.inf if op == "amin" else -math.inf
    return torch.full((t,), init, dtype=v.dtype, device=v.device).scatter_reduce_(0, seg, v, op, include_self=True)


def _accumulate(g: _Group, x: torch.Tensor, seg: torch.Tensor | None, dims: tuple[int, ...] | None = None) -> None:
    """Adds float32 values to the fields of ``g``: flat ``x`` by segment ``seg`` (None: one
    segment), or an (A, C, B) ``x`` reduced over ``dims`` = (0, 2) (one segment per channel)."""
    t = g.n.numel()
    finite = torch.isfinite(x)
    if g.ref is None:  # the first batch's mean of the finite values: the reference of the power sums
        count = _segment_sums(finite.to(torch.int64), seg, t, dims).clamp_(min=1)
        g.ref = _segment_sums(torch.where(finite, x, 0.0).double(), seg, t, dims) / count
    ref = g.ref if dims is None else g.ref.reshape(1, -1, 1)
    if seg is not None:
        ref = ref[seg]
    d = torch.where(finite, x.double() - ref, 0.0)
    d2 = d * d
    g.s += torch.stack([_segment_sums(v, seg, t, dims) for v in (d, d2, d2 * d, d2 * d2)])
    del d, d2
    g.n += _segment_sums(finite.to(torch.int64), seg, t, dims)
    g.nan += _segment_sums(torch.isnan(x).to(torch.int64), seg, t, dims)
    g.posinf += _segment_sums((x == math.inf).to(torch.int64), seg, t, dims)
    g.lo = torch.minimum(g.lo, _segment_extreme(torch.where(finite, x, math.inf).double(), seg, t, "amin", dims))
    g.hi = torch.maximum(g.hi, _segment_extreme(torch.where(finite, x, -math.inf).double(), seg, t, "amax", dims))


def _count(counts: torch.Tensor, bins: torch.Tensor) -> None:
    """``counts[b] += #{bins == b}`` for int bins in ``[0, counts.numel())``, by sort and searchsorted."""
    ordered = torch.sort(bins.reshape(-1)).values
    edges = torch.arange(counts.numel() + 1, dtype=ordered.dtype, device=ordered.device)
    counts += torch.searchsorted(ordered, edges).diff()


class DevicePartials:
    """Summaries of many tensors accumulated on their devices and moved to the host once.

    Args:
        space: the key space of the summaries' accuracy (``m <= 6``).

    Attributes:
        transfers: device-to-host transfers made so far (:meth:`collect` is the only place).
    """

    def __init__(self, space: KeySpace) -> None:
        if not space.supported:
            raise ValueError(f"relative_accuracy {space.relative_accuracy} needs more than 6 mantissa bits")
        self.space = space
        self.transfers = 0
        self._groups: list[_Group] = []
        self._single: dict[Hashable, _Group] = {}
        self._channels: dict[Hashable, _Channels] = {}
        self._seg_cache: dict[tuple[torch.device, tuple[int, ...]], torch.Tensor] = {}

    def _segments(self, device: torch.device, lengths: tuple[int, ...]) -> torch.Tensor:
        """Segment ids of concatenated tensors, filled on the device from the sizes (kernel
        arguments, no copy from the host) and kept for the next step with the same sizes."""
        seg = self._seg_cache.get((device, lengths))
        if seg is None:
            seg = torch.cat([torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(lengths)])
            if len(self._seg_cache) >= 4:  # a step's weights and grads: a few sets of sizes
                self._seg_cache.pop(next(iter(self._seg_cache)))
            self._seg_cache[(device, lengths)] = seg
        return seg

    def has(self, key: Hashable) -> bool:
        """Whether ``key`` has a scalar entry."""
        return key in self._single

    def __len__(self) -> int:
        return sum(len(g.keys) for g in self._groups) + len(self._channels)

    # ------------------------------------------------------------------ adding
    def add(self, key: Hashable, x: torch.Tensor) -> None:
        """Adds all values of ``x`` (float32, float16 or bfloat16, any device) to ``key``'s scalar summary."""
        x = _as_float32(x).reshape(-1)
        g = self._single.get(key)
        if g is None:
            g = self._single[key] = _Group.empty([key], self.space.nbins, x.device)
            self._groups.append(g)
        g.totals[0] += x.numel()
        for start in range(0, x.numel(), CHUNK):
            c = x[start : start + CHUNK]
            _accumulate(g, c, None)
            _count(g.counts, keys16(self.space, c).to(torch.int32))

    def add_group(self, items: Iterable[tuple[Hashable, torch.Tensor]]) -> None:
        """Adds each ``(key, tensor)`` as a scalar summary of its own; the keys must be new.

        Tensors below :data:`GROUP_LIMIT` values on the same device are reduced together.
        """
        small: dict[torch.device, list[tuple[Hashable, torch.Tensor]]] = {}
        for key, x in items:
            if key in self._single:
                raise ValueError(f"key {key!r} was already added")
            if x.numel() >= GROUP_LIMIT:
                self.add(key, x)
            else:
                small.setdefault(x.device, []).append((key, _as_float32(x).reshape(-1)))
        for device, batch in small.items():
            keys = [k for k, _ in batch]
            g = _Group.empty(keys, self.space.nbins, device)
            g.totals = [x.numel() for _, x in batch]
            seg = self._segments(device, tuple(g.totals))
            values = torch.cat([x for _, x in batch])
            _accumulate(g, values, seg)
            _count(g.counts, keys16(self.space, values).to(torch.int64) + seg * self.space.nbins)
            self._groups.append(g)
            for k in keys:
                self._single[k] = g

    def add_channels(self, key: Hashable, x: torch.Tensor, dim: int) -> None:
        """Adds ``x`` to ``key``'s per-channel summary: channel c holds the values with index c in ``dim``."""
        x = _as_float32(x)
        if x.ndim == 0:
            x = x.reshape(1)
        dim = dim % x.ndim
        c = x.shape[dim]
        x = x.reshape(math.prod(x.shape[:dim]), c, math.prod(x.shape[dim + 1 :]))  # (A, C, B), a view
        entry = self._channels.get(key)
        if entry is None:
            entry = self._channels[key] = _Channels(key, c)
            entry.parts = _Group.empty([key] * c, 0, x.device)
        elif entry.channels != c:
            raise ValueError(f"key {key!r} has {entry.channels} channels, got {c}")
        entry.total += x.shape[0] * x.shape[2]
        assert entry.parts is not None
        rows = max(1, CHUNK // max(1, c * x.shape[2]))
        for start in range(0, x.shape[0], rows):
            chunk = x[start : start + rows]
            _accumulate(entry.parts, chunk, None, dims=(0, 2))
            k = keys16(self.space, chunk)
            entry.keys.append(k)
            mag = k & (self.space.half - 1)
            valid = (mag >= self.space.k0) & (mag < self.space.top)
            lo = torch.where(valid, mag, torch.iinfo(torch.int16).max).amin()
            hi = torch.where(valid, mag, -1).amax()
            entry.kmin = lo if entry.kmin is None else torch.minimum(entry.kmin, lo)
            entry.kmax = hi if entry.kmax is None else torch.maximum(entry.kmax, hi)

    # ------------------------------------------------------------------ collecting
    def _to_host(self, t: torch.Tensor) -> np.ndarray:
        """The one device-to-host move (counted)."""
        self.transfers += 1
        return t.to("cpu", torch.float64).numpy()

    def collect(self) -> tuple[dict[Hashable, Summary], dict[Hashable, Summary]]:
        """All entries as summaries: ``(scalar summaries, per-channel summaries)``; then empties.

        Returns:
            Two dicts keyed like the adds: scalar summaries (:meth:`add`, :meth:`add_group`)
            and per-channel summaries (:meth:`add_channels`).
        """
        sp = self.space
        whole: dict[Hashable, Summary] = {}
        chans: dict[Hashable, Summary] = {}
        by_device: dict[torch.device, list[object]] = {}
        for g in self._groups:
            by_device.setdefault(g.n.device, []).append(g)
        for entry in self._channels.values():
            assert entry.parts is not None
            by_device.setdefault(entry.parts.n.device, []).append(entry)
        for device, entries in by_device.items():
            parts: list[torch.Tensor] = []
            for e in entries:
                if isinstance(e, _Group):
                    parts += [e.fields().reshape(-1), e.counts.double()]
                else:
                    assert isinstance(e, _Channels) and e.parts is not None
                    parts += [e.parts.fields().reshape(-1), torch.stack([e.kmin, e.kmax]).double()]
            host = self._to_host(torch.cat(parts))
            pos = 0
            pending: list[tuple[_Channels, np.ndarray, int, int]] = []
            for e in entries:
                if isinstance(e, _Group):
                    t = len(e.keys)
                    f = host[pos : pos + len(FIELDS) * t].reshape(len(FIELDS), t)
                    pos += len(FIELDS) * t
                    counts = host[pos : pos + t * sp.nbins].reshape(t, sp.nbins)
                    pos += t * sp.nbins
                    for i, key in enumerate(e.keys):
                        whole[key] = whole_summary(sp, f[:, i], counts[i], e.totals[i])
                else:
                    assert isinstance(e, _Channels)
                    c = e.channels
                    f = host[pos : pos + len(FIELDS) * c].reshape(len(FIELDS), c)
                    kmin, kmax = int(host[pos + len(FIELDS) * c]), int(host[pos + len(FIELDS) * c + 1])
                    pos += len(FIELDS) * c + 2
                    pending.append((e, f, kmin, max(0, kmax - kmin + 1)))
            chans.update(self._channel_counts(pending))
        self._groups, self._single, self._channels = [], {}, {}
        return whole, chans

    def _channel_counts(self, pending: Sequence[tuple[_Channels, np.ndarray, int, int]]) -> dict[Hashable, Summary]:
        """Second transfer: per-channel counts on each entry's key range ``[negative | positive | zero]``."""
        if not pending:
            return {}
        sp = self.space
        parts = []
        for e, _f, kmin, w in pending:
            width = 2 * w + 1
            counts = torch.zeros(e.channels * width + 1, dtype=torch.int64, device=e.keys[0].device)
            channel = torch.arange(e.channels, device=counts.device).reshape(1, -1, 1) * width
            for k in e.keys:
                k = k.to(torch.int64)
                mag = k & (sp.half - 1)
                col = torch.where(k >= sp.half, mag - kmin, w + mag - kmin)
                col = torch.where(k == 0, 2 * w, col) + channel
                _count(counts, torch.where(mag >= sp.top, e.channels * width, col))  # NaN/Inf: a dropped bin
            parts.append(counts[:-1].double())
        host = self._to_host(torch.cat(parts))
        out, pos = {}, 0
        for e, f, kmin, w in pending:
            size = e.channels * (2 * w + 1)
            out[e.key] = channel_summary(sp, f, host[pos : pos + size].reshape(e.channels, 2 * w + 1), kmin, e.total)
            pos += size
        return out
