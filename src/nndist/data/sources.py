"""Image data by name: CIFAR-10, the built-in ``shapes``, or any image folder.

A data source is a registry name or a path::

    test = load_split("cifar10", "test")                       # torchvision's CIFAR10, cached
    test = load_split("shapes", "test")                        # generated, no download
    test = load_split("../shared/data/cifar10-jpeg", "test")   # image folder with train/ and test/

Every source gives an :class:`~nndist.data.images.ImageData`: all images decoded once into one
uint8 tensor ``(N, 3, H, W)`` with int64 labels, normalised on demand batch by batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ..errors import NndistError
from ..registry import Registry
from .cifar10 import load_cifar10
from .folder import load_image_folder
from .images import RESIZE_MODES, SPLITS, ImageData
from .shapes import load_shapes

__all__ = ["DATASETS", "load_split"]

#: Named sources: ``loader(split, **options) -> ImageData``; any other string is a folder path.
DATASETS: Registry[Callable[..., ImageData]] = Registry("data source")


def load_split(
    source: str | os.PathLike[str],
    split: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    resize: str = "cifar",
    skip_bad_images: bool = False,
    progress: bool = True,
    **options: Any,
) -> ImageData:
    """Loads one split of a data source.

    Args:
        source: ``cifar10``, ``shapes`` or the path of an image folder holding ``train/`` and
            ``test/``, each with one subfolder per class.
        split: ``"train"`` or ``"test"``.
        cache_dir: Cache directory (default ``$NNDIST_CACHE`` or ``~/.cache/nndist``).
        image_size: Resize images to this size (see ``resize``); None keeps their size.
        resize: ``"cifar"``: images must share one size (or are resized to ``image_size``
            squared); ``"imagenet"``: shorter side to 256 (``image_size * 256/224``) then
            centre crop 224 (``image_size``), torchvision's ImageNet evaluation transform.
        skip_bad_images: Skip unreadable images and empty class folders (listed in
            ``bad_files``) instead of raising.
        progress: Show a progress bar while decoding.
        **options: Source-specific options (``shapes``: ``n``, ``seed``).

    Returns:
        The :class:`ImageData`.

    Raises:
        NndistError: Bad split, missing or unreadable data; the message names the path and fix.
    """
    if split not in SPLITS:
        raise NndistError(f"unknown split {split!r}; use train or test")
    if resize not in RESIZE_MODES:
        raise NndistError(f"unknown resize mode {resize!r}; use cifar or imagenet")
    common = dict(cache_dir=cache_dir, image_size=image_size, resize=resize,
                  skip_bad_images=skip_bad_images, progress=progress)
    name = str(source)
    if not isinstance(source, os.PathLike) and name in DATASETS:
        return DATASETS.get(name)(split, **common, **options)
    path = Path(name).expanduser()
    if path.is_dir():
        return load_image_folder(path, split, **common)
    looks_like_path = isinstance(source, os.PathLike) or os.sep in name or name.startswith(".")
    if looks_like_path:
        raise NndistError(
            f"data folder {path} does not exist; pass --data PATH to an image folder with train/ and test/, "
            f"or one of: {', '.join(DATASETS.names())}"
        )
    DATASETS.get(name)  # raises: unknown name, listing valid ones
    raise AssertionError("unreachable")  # pragma: no cover


DATASETS.add("cifar10", load_cifar10)
DATASETS.add("shapes", load_shapes)
