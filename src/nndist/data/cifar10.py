"""CIFAR-10 through torchvision (downloaded once where online, a clear error offline)."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import NndistError
from .images import ImageData, cache_root, resize_batch

__all__ = ["load_cifar10"]


def load_cifar10(
    split: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    resize: str = "cifar",
    skip_bad_images: bool = False,
    progress: bool = True,
) -> ImageData:
    """CIFAR-10 through ``torchvision.datasets.CIFAR10`` under ``<cache>/cifar10``.

    Downloads it when absent and online; offline and absent raises an error pointing to
    ``--data PATH`` (an image folder with train/ and test/ works, e.g. a JPEG copy of CIFAR-10).
    """
    from torchvision.datasets import CIFAR10

    root = cache_root(cache_dir) / "cifar10"
    train = split == "train"
    try:
        ds = CIFAR10(str(root), train=train, download=False)
    except RuntimeError:  # not there (or corrupt): try to download it
        try:
            ds = CIFAR10(str(root), train=train, download=True)
        except Exception as exc:  # URLError, OSError, RuntimeError, ...: report, do not crash
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise NndistError(
                f"CIFAR-10 is not in {root} and cannot be downloaded ({reason}); pass --data PATH to an "
                "image folder with train/ and test/ class subfolders (e.g. a JPEG copy of CIFAR-10), "
                "or set NNDIST_CACHE to where cifar10/cifar-10-batches-py is"
            ) from exc
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # (N,3,32,32)
    images = resize_batch(images, image_size, resize)
    return ImageData(
        images=images,
        labels=torch.tensor(ds.targets, dtype=torch.int64),
        classes=list(ds.classes),
        source="cifar10",
        split=split,
    )
