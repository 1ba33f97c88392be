r"""Partial summaries: the additive state of a batch, computed where the values are, finished on the host.

A *partial* is what the device-side path (:mod:`.device`) and the serial CPU kernel
(:mod:`.partials_cpu`) reduce a tensor to, so that many tensors can be summarised with one
host transfer and turned into :class:`~nndist.stats.Summary` objects afterwards. Its parts add:

* ``fields``: the float64 vector :data:`FIELDS` = ``n, nan, posinf, s1, s2, s3, s4, ref, min,
  max``: the count of finite values, of NaN and of +Inf, the power sums
  ``s_p = sum (x - ref)^p`` of the finite values about a reference ``ref`` fixed at the first
  batch (near the mean, so :func:`~nndist.stats.moments.central_sums` loses nothing to
  cancellation), and the exact extremes. -Inf is what is left: ``total - n - nan - posinf``
  with ``total`` the number of values, which the host knows from the shapes.
* ``counts``: bucket counts over the whole float32 key space (:class:`KeySpace`), or, per
  channel, over one key range shared by the channels (``[negative | positive | zero]``, as
  :meth:`~nndist.stats.sketch.Sketch.add_chunk` lays them out).

Keys are those of the sketch, read off the float32 bit pattern: the high int16 of a float32
shifted right by ``7 - m`` and masked to ``9 + m`` bits is ``key(|v|)`` for ``v >= 0`` and
``2^(8+m) + key(|v|)`` for ``v < 0`` (``m <= 6``). A value with ``|v| < min_abs`` gets key 0 (it
belongs to the zero bucket; comparing with :attr:`KeySpace.t32`, the smallest float32 not below
``min_abs``, is exact); NaN and Inf have the all-ones exponent, so their magnitude keys are
``>= top = 255 * 2^m`` and are dropped here (they are counted in ``fields``).

:func:`whole_summary` and :func:`channel_summary` build the summaries through
:meth:`Summary.from_state_dict`, the one serialisation, so what comes out merges, packs and
reports like any other summary. :func:`collapse` merges the channels of a per-channel summary
into one scalar summary and :func:`embed_channels` places a summary of channels ``a..b`` into
one of ``C`` channels (a shard of a parameter), both exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any
import numpy as np

from .moments import central_sums
from .sketch import key_of, mantissa_bits, nonzero_ends
from .summary import STATE_ARRAYS, Summary

__all__ = ["FIELDS", "KeySpace", "channel_summary", "collapse", "compact_summary", "embed_channels", "whole_summary"]

#: The float64 fields of a partial, in order.
FIELDS: tuple[str, ...] = ("n", "nan", "posinf", "s1", "s2", "s3", "s4", "ref", "min", "max")


@dataclass(frozen=True)
class KeySpace:
    """The float32 key space of a summary's accuracy: ``nbins = 2^(9+m)`` signed keys.

    Attributes:
        relative_accuracy, min_abs: the summary's arguments.
        m: mantissa bits (at most 6 for this key space).
        k0: key of ``min_abs``; keys below it are the zero bucket.
        half: ``2^(8+m)``, the first negative key.
        top: ``255 * 2^m``, the first magnitude key of NaN and Inf.
        t32: the smallest float32 ``>= min_abs``: for a float32 ``v``, ``|v| < min_abs`` iff
            ``|v| < t32``.
    """

    relative_accuracy: float = 0.01
    min_abs: float = 1e-12

    @cached_property
    def m(self) -> int:
        return mantissa_bits(self.relative_accuracy)

    @cached_property
    def supported(self) -> bool:
        """Whether the int16 key trick applies (``m <= 6``); otherwise callers use :meth:`Summary.update`."""
        return self.m <= 6

    @cached_property
    def k0(self) -> int:
        return key_of(self.min_abs, self.m)

    @cached_property
    def half(self) -> int:
        return 1 << (8 + self.m)

    @cached_property
    def nbins(self) -> int:
        return 2 * self.half

    @cached_property
    def top(self) -> int:
        return 255 << self.m

    @cached_property
    def t32(self) -> float:
        t = np.float32(self.min_abs)
        if float(t) < self.min_abs:
            t = np.nextafter(t, np.float32(np.inf))
        return float(t)

    def empty(self, channels: int | None = None) -> Summary:
        """An empty summary of this accuracy."""
        return Summary(channels, relative_accuracy=self.relative_accuracy, min_abs=self.min_abs)


def _central(f: np.ndarray) -> tuple[np.ndarray, ...]:
    """(mean, M2, M3, M4) from partial fields (10, C); zeros where n = 0 (vectorised central_sums)."""
    n, s1, s2, s3, s4, ref = f[0], f[3], f[4], f[5], f[6], f[7]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = ref + s1 / n
        m2 = s2 - s1 * s1 / n
        m3 = s3 - 3.0 * s1 * s2 / n + 2.0 * s1**3 / n**2
        m4 = s4 - 4.0 * s1 * s3 / n + 6.0 * s1 * s1 * s2 / n**2 - 3.0 * s1**4 / n**3
    has = n > 0
    return (np.where(has, mean, 0.0), np.where(has, np.maximum(m2, 0.0), 0.0),
            np.where(has, m3, 0.0), np.where(has, np.maximum(m4, 0.0), 0.0))


_BLANKS: dict[tuple[float, float, int | None], Summary] = {}


def _blank(space: KeySpace, channels: int | None) -> tuple[Summary, Any]:
    """A copy of an empty summary of this accuracy and channels, and its sketch (to be filled)."""
    key = (space.relative_accuracy, space.min_abs, channels)
    blank = _BLANKS.get(key)
    if blank is None:
        blank = _BLANKS[key] = space.empty(channels)
    s = object.__new__(Summary)
    s.__dict__.update(blank.__dict__)
    sk = object.__new__(type(blank._sketch))  # noqa: SLF001 - this module builds summaries
    sk.__dict__.update(blank._sketch.__dict__)  # noqa: SLF001
    s._sketch = sk  # noqa: SLF001
    return s, sk


def _state(space: KeySpace, channels: int | None, arrays: dict[str, np.ndarray],
           neg: tuple[int, np.ndarray], pos: tuple[int, np.ndarray]) -> Summary:
    """A summary holding the state arrays of :data:`STATE_ARRAYS` and the two stores.

    The state of :meth:`Summary.state_dict`, put into a copy of an empty summary of the same
    accuracy and channels (a hundred times a step: the checks of ``from_state_dict`` are for
    states read from files, and these are made here).
    """
    s, sk = _blank(space, channels)
    for name, dtype in STATE_ARRAYS.items():
        value = arrays[name]
        if type(value) is not np.ndarray or value.dtype != dtype or value.shape != (sk.c,):
            value = np.asarray(value, dtype=dtype).reshape(sk.c)
        if name == "zero":
            sk.zero = value
        else:
            setattr(s, "_" + name, value)
    sk.neg_off, sk.neg = int(neg[0]), neg[1]
    sk.pos_off, sk.pos = int(pos[0]), pos[1]
    return s


def _trimmed(offset: int, store: np.ndarray) -> tuple[int, np.ndarray]:
    """(C, K) counts from key ``offset`` without the empty columns at both ends."""
    cols = np.flatnonzero(store.any(axis=0))
    if cols.size == 0:
        return offset, np.zeros((store.shape[0], 0), dtype=np.int64)
    return offset + int(cols[0]), np.ascontiguousarray(store[:, cols[0] : cols[-1] + 1], dtype=np.int64)


def _arrays(f: np.ndarray, total: np.ndarray, zero: np.ndarray) -> dict[str, np.ndarray]:
    """The state arrays of :data:`STATE_ARRAYS` from partial fields (10, C)."""
    n = f[0].astype(np.int64)
    nan, posinf = f[1].astype(np.int64), f[2].astype(np.int64)
    mean, m2, m3, m4 = _central(f)
    has = n > 0
    return {"n": n, "nan": nan, "posinf": posinf, "neginf": np.asarray(total, dtype=np.int64) - n - nan - posinf,
            "zero": zero, "mean": mean, "m2": m2, "m3": m3, "m4": m4,
            "min": np.where(has, f[8], np.inf), "max": np.where(has, f[9], -np.inf)}


def _trimmed_row(offset: int, row: np.ndarray) -> tuple[int, np.ndarray]:
    """:func:`_trimmed` of one channel's (K,) counts, as (1, K') (a copy)."""
    ends = nonzero_ends(row)
    if ends.size == 0:
        return offset, np.zeros((1, 0), dtype=np.int64)
    return offset + int(ends[0]), row[None, ends[0] : ends[1] + 1].astype(np.int64)


def compact_summary(space: KeySpace, fields: np.ndarray, zero: int, neg: tuple[int, np.ndarray],
                    pos: tuple[int, np.ndarray], total: int, *, trimmed: bool = False) -> Summary:
    """A scalar summary from a partial whose counts are already on their key ranges.

    Args:
        space: the key space.
        fields: :data:`FIELDS` as float64.
        zero: the zero bucket's count.
        neg, pos: ``(first key, counts)`` of the negative and positive values (1-D).
        total: the number of values, finite or not.
        trimmed: the counts are int64 arrays of their own (not views), with non-zero first and
            last counts (or empty), and are kept as they are; otherwise they are trimmed into copies.
    """
    f = fields.tolist()
    n, nan, posinf = int(f[0]), int(f[1]), int(f[2])
    mean, m2, m3, m4 = central_sums(f[3], f[4], f[5], f[6], n, f[7]) if n else (0.0, 0.0, 0.0, 0.0)
    ints = np.array([n, nan, posinf, int(total) - n - nan - posinf, int(zero)], dtype=np.int64)
    floats = np.array([mean, m2, m3, m4, f[8] if n else np.inf, f[9] if n else -np.inf])
    # the state arrays of STATE_ARRAYS, set directly (a hundred and more times a step; _state checks them)
    s, sk = _blank(space, None)
    s._n, s._nan, s._posinf, s._neginf, sk.zero = ints[0:1], ints[1:2], ints[2:3], ints[3:4], ints[4:5]  # noqa: SLF001
    s._mean, s._m2, s._m3, s._m4 = floats[0:1], floats[1:2], floats[2:3], floats[3:4]  # noqa: SLF001
    s._min, s._max = floats[4:5], floats[5:6]  # noqa: SLF001
    if trimmed:
        sk.neg_off, sk.neg = int(neg[0]), neg[1].reshape(1, -1)
        sk.pos_off, sk.pos = int(pos[0]), pos[1].reshape(1, -1)
    else:
        sk.neg_off, sk.neg = _trimmed_row(*neg)
        sk.pos_off, sk.pos = _trimmed_row(*pos)
    return s


def whole_summary(space: KeySpace, fields: np.ndarray, counts: np.ndarray, total: int) -> Summary:
    """A scalar summary from a partial: ``fields`` (10,), ``counts`` over all ``nbins`` keys.

    Args:
        space: the key space the counts were made in.
        fields: :data:`FIELDS` as float64.
        counts: (nbins,) counts of the signed keys (zero bucket at key 0).
        total: the number of values, finite or not.
    """
    half, k0, top = space.half, space.k0, space.top
    zero = int(counts[:k0].sum() + counts[half : half + k0].sum())
    return compact_summary(space, fields, zero, (k0, counts[half + k0 : half + top]), (k0, counts[k0:top]), total)


def channel_summary(space: KeySpace, fields: np.ndarray, counts: np.ndarray, kmin: int, total: int) -> Summary:
    """A per-channel summary from a partial over one shared key range.

    Args:
        space: the key space.
        fields: (10, C) float64 :data:`FIELDS` per channel.
        counts: (C, 2W + 1) per channel: W negative keys from ``kmin``, W positive keys from
            ``kmin``, then the zero bucket (W = 0 when no value left the zero bucket).
        kmin: the first key of the range.
        total: the number of values of each channel, finite or not.
    """
    counts = np.asarray(counts, dtype=np.int64)
    f = np.asarray(fields, dtype=np.float64)
    c = f.shape[1]
    w = (counts.shape[1] - 1) // 2
    arrays = _arrays(f, np.full(c, total), counts[:, 2 * w].copy())
    return _state(space, c, arrays, _trimmed(kmin, counts[:, :w]), _trimmed(kmin, counts[:, w : 2 * w]))


def collapse(s: Summary) -> Summary:
    """The scalar summary of all values of a per-channel summary (its channels merged), exactly.

    With ``d_c = mean_c - mean`` the central sums about the grand mean are
    ``M2 = sum_c (M2_c + n_c d_c^2)``, ``M3 = sum_c (M3_c + 3 d_c M2_c + n_c d_c^3)`` and
    ``M4 = sum_c (M4_c + 4 d_c M3_c + 6 d_c^2 M2_c + n_c d_c^4)`` (the binomial expansion of
    ``((x - mean_c) + d_c)^p``; the first central sum of each channel is zero). Counts and
    buckets add.
    """
    st = s.state_dict()
    if st["channels"] is None:
        return s.copy()
    n = st["n"].astype(np.float64)
    total = float(n.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = float((n * st["mean"]).sum() / total) if total else 0.0
    d = np.where(n > 0, st["mean"] - mean, 0.0)
    m2 = float((st["m2"] + n * d**2).sum())
    m3 = float((st["m3"] + 3 * d * st["m2"] + n * d**3).sum())
    m4 = float((st["m4"] + 4 * d * st["m3"] + 6 * d**2 * st["m2"] + n * d**4).sum())
    has = st["n"] > 0
    arrays = {name: np.array([st[name].sum()]) for name in ("n", "nan", "posinf", "neginf", "zero")}
    arrays.update(mean=np.array([mean]), m2=np.array([m2]), m3=np.array([m3]), m4=np.array([m4]),
                  min=np.array([st["min"][has].min() if has.any() else np.inf]),
                  max=np.array([st["max"][has].max() if has.any() else -np.inf]))
    space = KeySpace(st["relative_accuracy"], st["min_abs"])
    return _state(space, None, arrays, (st["neg_offset"], st["neg"].sum(0, keepdims=True)),
                  (st["pos_offset"], st["pos"].sum(0, keepdims=True)))


def embed_channels(s: Summary, start: int, channels: int) -> Summary:
    """Summary ``s`` of channels ``start .. start + C_s - 1`` as a summary of ``channels`` channels.

    The other channels are empty, so merging the embedded summaries of disjoint channel ranges
    (the dim-0 shards of a parameter on several ranks) gives the summary of the whole tensor.
    """
    st = s.state_dict()
    c = 1 if st["channels"] is None else st["channels"]
    if start < 0 or start + c > channels:
        raise ValueError(f"channels {start}..{start + c - 1} do not fit in {channels}")
    empty = KeySpace(st["relative_accuracy"], st["min_abs"]).empty(channels).state_dict()
    for name in STATE_ARRAYS:
        empty[name][start : start + c] = st[name]
    for store in ("neg", "pos"):
        full = np.zeros((channels, st[store].shape[1]), dtype=np.int64)
        full[start : start + c] = st[store]
        empty[store], empty[f"{store}_offset"] = full, st[f"{store}_offset"]
    empty["channels"] = channels
    return Summary.from_state_dict(empty)
