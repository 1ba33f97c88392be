"""Summaries of the many tensors of one step, each computed where its tensor is.

:class:`StepSummaries` is what a training monitor fills during a step (weights, grads, the
outputs of layers) and empties at its end. Each tensor takes the cheapest exact path:

* float32/float16/bfloat16 on CUDA (or any non-CPU device): :class:`~nndist.stats.device.DevicePartials`,
  device ops only and one transfer per device for the whole step;
* the same dtypes on the CPU: the serial compiled pass of :mod:`~nndist.stats.partials_cpu`
  on a thread pool (no OpenMP, so no contention with torch's threads);
* anything else (float64, integers, or an accuracy finer than the int16 keys allow):
  :meth:`Summary.update`.

Per-channel summaries go through the device path on every device (torch ops; on the CPU that
is its literal twin in the tests) and, asked for, give the scalar summary of the same tensor by
:func:`~nndist.stats.partials.collapse`, so the values are read once.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import torch

from . import partials_cpu
from .device import DTYPES, DevicePartials
from .partials import KeySpace, collapse
from .summary import Summary

__all__ = ["HOLD_BYTES", "StepSummaries"]

#: Bytes of copies that :meth:`StepSummaries.hold` keeps before it summarises them together.
HOLD_BYTES = 1 << 26
_ALIGN = 64


class StepSummaries:
    """Scalar and per-channel summaries of the tensors of one step, keyed by the caller.

    Args:
        relative_accuracy: of every summary (see :class:`Summary`).
        min_abs: of every summary.
        device_side: force the device path for CPU tensors too (tests; the literal twin of
            the CPU kernel); None picks by device.

    Attributes:
        partials: the device-side accumulator (its ``transfers`` counts host transfers).
    """

    def __init__(self, relative_accuracy: float = 0.01, min_abs: float = 1e-12, *, device_side: bool | None = None) -> None:
        self.space = KeySpace(relative_accuracy, min_abs)
        self.partials = DevicePartials(self.space) if self.space.supported else None
        self._device_side = device_side
        self._host: dict[Hashable, Summary] = {}
        self._host_channels: dict[Hashable, Summary] = {}
        self._with_whole: set[Hashable] = set()
        self._held: list[tuple[Hashable, torch.Tensor]] = []
        self._held_bytes = 0
        self._arena: torch.Tensor | None = None  # bytes of the copies held
        self._used = 0

    def _path(self, x: torch.Tensor) -> str:
        if self.partials is None or x.dtype not in DTYPES:
            return "host"
        if self._device_side or (self._device_side is None and x.device.type != "cpu"):
            return "device"
        return "cpu" if partials_cpu.AVAILABLE else "device"

    def _merge_host(self, store: dict[Hashable, Summary], key: Hashable, s: Summary) -> None:
        if key in store:
            store[key].merge(s)
        else:
            store[key] = s

    def add(self, key: Hashable, x: torch.Tensor) -> None:
        """Adds the values of ``x`` to ``key``'s scalar summary (repeated adds accumulate)."""
        self.add_many([(key, x)])

    def hold(self, key: Hashable, x: torch.Tensor) -> None:
        """:meth:`add` for tensors that arrive one at a time (the outputs of layers in a forward).

        A tensor of the CPU path is copied (a later in-place op, such as a ReLU, must not change
        what is summarised) and summarised with the next :meth:`add_many` or :meth:`collect`, or
        once the copies reach :data:`HOLD_BYTES`, all in one call on the thread pool: a forest of
        small outputs summarised one by one costs more in fixed costs than in counting (a
        resnet18 forward at 32x32, batch 32: 41 outputs, 3.2M values). The copies go into one
        buffer kept from step to step, so they cost no fresh pages. Other tensors are added now.
        """
        nbytes = x.numel() * x.element_size()
        if self._path(x) != "cpu" or nbytes > HOLD_BYTES:
            self.add(key, x)
            return
        if self._held_bytes + nbytes > HOLD_BYTES:
            self.add_many(())
        size = -(-nbytes // _ALIGN) * _ALIGN
        if self._arena is None or self._used + size > self._arena.numel():
            # a larger buffer for this and later steps; what is held stays in the old one until summarised
            grown = 0 if self._arena is None else self._arena.numel()
            self._arena = torch.empty(max(size, min(HOLD_BYTES, max(2 * grown, 1 << 20))), dtype=torch.uint8)
            self._used = 0
        copy = self._arena[self._used : self._used + nbytes].view(x.dtype).view(x.shape)
        copy.copy_(x.detach())
        self._used += size
        self._held.append((key, copy))
        self._held_bytes += nbytes

    def add_many(self, items: Iterable[tuple[Hashable, torch.Tensor]]) -> None:
        """Adds many ``(key, tensor)`` pairs (and those held by :meth:`hold`); the device path
        reduces small ones together."""
        device, cpu = [], []
        held, self._held, self._held_bytes, self._used = self._held, [], 0, 0  # summarised below: the buffer is free again
        for key, x in [*held, *items]:
            path = self._path(x)
            if path == "host":
                self._merge_host(self._host, key, Summary(relative_accuracy=self.space.relative_accuracy,
                                                          min_abs=self.space.min_abs).update(x.detach()))
            elif path == "cpu":
                cpu.append((key, x.detach()))
            else:
                device.append((key, x.detach()))
        if cpu:  # computed now: the tensor may change after this call (an in-place ReLU)
            for (key, _), s in zip(cpu, partials_cpu.cpu_summaries(self.space, [x for _, x in cpu])):
                self._merge_host(self._host, key, s)
        if device:
            assert self.partials is not None
            if len(device) == 1 or any(self.partials.has(k) for k, _ in device):
                for key, x in device:
                    self.partials.add(key, x)
            else:
                self.partials.add_group(device)

    def add_channels(self, key: Hashable, x: torch.Tensor, dim: int, *, whole: bool = False) -> None:
        """Adds ``x`` to ``key``'s per-channel summary over dimension ``dim``.

        Args:
            key: the summary's key.
            x: the values; channel c holds those with index c in ``dim``.
            dim: the channel dimension.
            whole: also give ``key``'s scalar summary (the channels merged) from :meth:`collect`.
        """
        if whole:
            self._with_whole.add(key)
        if self.partials is None or x.dtype not in DTYPES:
            x = x.detach()
            c = x.shape[dim] if x.ndim else 1
            values = x.movedim(dim, -1).reshape(-1, c) if x.ndim else x.reshape(1, 1)
            self._merge_host(self._host_channels, key, Summary(c, relative_accuracy=self.space.relative_accuracy,
                                                               min_abs=self.space.min_abs).update(values))
        else:
            self.partials.add_channels(key, x, dim)

    @property
    def transfers(self) -> int:
        """Device-to-host transfers made by the device path so far."""
        return 0 if self.partials is None else self.partials.transfers

    def collect(self) -> tuple[dict[Hashable, Summary], dict[Hashable, Summary]]:
        """``(scalar summaries, per-channel summaries)`` of everything added; then empties."""
        if self._held:
            self.add_many(())
        whole, chans = dict(self._host), dict(self._host_channels)
        if self.partials is not None and len(self.partials):
            dev_whole, dev_chans = self.partials.collect()
            for key, s in dev_whole.items():
                self._merge_host(whole, key, s)
            for key, s in dev_chans.items():
                self._merge_host(chans, key, s)
        for key in self._with_whole:
            if key in chans:
                self._merge_host(whole, key, collapse(chans[key]))
        self._host, self._host_channels, self._with_whole = {}, {}, set()
        return whole, chans
