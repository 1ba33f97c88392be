"""Counting host reads of tensor data: each is a device sync on CUDA, so the device path must make
none outside its transfers. Shared by the stats and the monitor tests."""

from __future__ import annotations

import torch

#: The Tensor methods that read tensor data on the host.
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


class HostReads:
    """Wraps every method of :data:`READS` (through pytest's ``monkeypatch``) and lists the calls."""

    def __init__(self, monkeypatch) -> None:  # noqa: ANN001
        self.calls: list[str] = []
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counted(t, *args, __name=name, __original=original, **kwargs):  # noqa: ANN001, ANN002, ANN003
                self.calls.append(__name)
                return __original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
