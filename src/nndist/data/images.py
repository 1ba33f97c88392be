"""Decoded image data: one uint8 tensor per split, normalised on demand, and the resize rules."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import NndistError

__all__ = ["ImageData", "RESIZE_MODES", "SPLITS", "cache_root", "resize_batch", "resize_one"]

SPLITS = ("train", "test")
RESIZE_MODES = ("cifar", "imagenet")


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$NNDIST_CACHE``, else ``~/.cache/nndist``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("NNDIST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nndist"


@dataclass
class ImageData:
    """A split of an image data set, decoded.

    Attributes:
        images: uint8 ``(N, 3, H, W)``.
        labels: int64 ``(N,)``, indices into ``classes``.
        classes: Class names; label ``i`` is ``classes[i]``.
        source: The source it came from (name or resolved path).
        split: ``"train"`` or ``"test"``.
        files: Paths relative to the split folder, in data order (image folders only).
        bad_files: Files (relative paths; empty class folders end in ``/``) skipped with
            ``skip_bad_images=True``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str
    split: str
    files: list[str] | None = None
    bad_files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def normalized(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        indices: Any = None,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Float32 images ``(n, 3, H, W)``: ``(x / 255 - mean) / std`` per channel.

        Args:
            mean: Per-channel mean of [0, 1] pixels.
            std: Per-channel std of [0, 1] pixels.
            indices: Which images (anything that indexes a tensor); None for all.
            device: Where the result lives; the uint8 images are moved first (4x less traffic).

        Raises:
            NndistError: ``mean``/``std`` hold the wrong number of values, a non-finite value or a
                std <= 0 (which would turn every pixel into Inf or NaN).
        """
        _check_normalisation(mean, std, int(self.images.shape[1]))
        x = self.images if indices is None else self.images[_as_index(indices)]
        x = x.to(device) if device is not None else x
        m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return (x.to(torch.float32) / 255.0 - m) / s

    def pixel_statistics(self, indices: Any = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std (population) of the selected images' [0, 1] pixels, in float64.

        The normalisation a model with no stated one is given (std at least 1e-6).
        """
        x = self.images if indices is None else self.images[_as_index(indices)]
        x = x.to(torch.float64) / 255.0  # (N, C, H, W)
        std = x.std(dim=(0, 2, 3), unbiased=False).clamp_min(1e-6)
        return tuple(float(v) for v in x.mean(dim=(0, 2, 3))), tuple(float(v) for v in std)

    def subset(self, indices: Any) -> "ImageData":
        """The images at ``indices`` (in that order), as a new :class:`ImageData`."""
        idx = _as_index(indices)
        files = None if self.files is None else [self.files[i] for i in idx.tolist()]
        return replace(self, images=self.images[idx], labels=self.labels[idx], files=files)


def _check_normalisation(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    """Raises a clear error for normalisation values that cannot work (checked before any pixel)."""
    for name, values in (("mean", mean), ("std", std)):
        v = np.atleast_1d(np.asarray(values, dtype=np.float64))
        shown = ",".join(f"{float(a):g}" for a in v)
        if v.ndim != 1 or len(v) not in (1, channels):
            raise NndistError(
                f"--{name} {shown}: {len(v.ravel())} value(s) for images with {channels} channels; "
                f"give {channels} comma-separated values (or one for all channels)"
            )
        if not np.isfinite(v).all():
            raise NndistError(f"--{name} {shown}: every value must be a finite number")
        if name == "std" and (v <= 0).any():
            raise NndistError(
                f"--std {shown}: every value must be positive (a std of 0 divides the pixels by zero); "
                "give each channel's pixel std on the [0, 1] scale, e.g. 0.2470,0.2435,0.2616"
            )


def _as_index(indices: Any) -> torch.Tensor:
    if isinstance(indices, torch.Tensor):
        return indices.to(torch.long)
    return torch.as_tensor(np.asarray(indices, dtype=np.int64))


def resize_batch(images: torch.Tensor, image_size: int | None, resize: str) -> torch.Tensor:
    """Resizes a uint8 batch ``(N, 3, H, W)`` that shares one size."""
    if image_size is None and resize == "cifar":
        return images
    return torch.stack([resize_one(im, image_size, resize) for im in images]) if len(images) else images


def resize_one(im: torch.Tensor, image_size: int | None, resize: str) -> torch.Tensor:
    """One uint8 image ``(3, H, W)`` resized as ``load_split`` documents."""
    from torchvision.transforms.v2 import functional as TF

    if resize == "imagenet":
        crop = image_size or 224
        short = int(round(crop * 256 / 224))
        im = TF.resize(im, [short], antialias=True)
        return TF.center_crop(im, [crop, crop])
    if image_size is None or tuple(im.shape[1:]) == (image_size, image_size):
        return im
    return TF.resize(im, [image_size, image_size], antialias=True)
