"""Image folders (``train/<class>/*`` and ``test/<class>/*``), decoded once and cached on disk.

The decoded split is cached under ``NNDIST_CACHE`` (default ``~/.cache/nndist``), keyed by the
folder, the split, every file's name, size and mtime, and the resize setting, so a changed file
invalidates the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import NndistError
from ..io import atomic_path
from ..progress import progress_bar
from .images import ImageData, cache_root, resize_one

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_CACHE_VERSION = 1


def _decode(data: bytes, path: Path | None) -> torch.Tensor:
    """Decodes image bytes to uint8 RGB ``(3, H, W)``; raises ValueError with a reason.

    PIL, not ``torchvision.io`` (deprecated since torchvision 0.29): it reads every common
    format, converts grayscale, RGBA and palette images to RGB, and releases the GIL while
    decoding, so a thread pool decodes in parallel.
    """
    if not data:
        raise ValueError("empty (zero-byte) file")
    import io as _io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_io.BytesIO(data)) as img:
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
            arr = np.array(img.convert("RGB"))  # (H, W, 3); forces the full decode
    except UnidentifiedImageError:
        raise ValueError("not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"corrupt image ({exc})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _list_split(root: Path, split: str, skip_bad: bool) -> tuple[list[str], list[tuple[str, int, int, int]], list[str]]:
    """Classes, files ``(relpath, label, size, mtime_ns)`` and empty class folders of a split."""
    split_dir = root / split
    if not split_dir.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise NndistError(
            f"{split_dir} does not exist (found {present or 'no folders'}); an image folder needs "
            "train/ and test/ subfolders, each with one folder of images per class"
        )
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise NndistError(
            f"{split_dir} has no class folders; put the images of each class in {split_dir}/<class>/"
        )
    files: list[tuple[str, int, int, int]] = []
    empty: list[str] = []
    for label, cls in enumerate(classes):
        entries = sorted(
            (e for e in os.scandir(split_dir / cls)
             if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)),
            key=lambda e: e.name,
        )
        if not entries:
            if not skip_bad:
                raise NndistError(
                    f"class folder {split_dir / cls} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                    "add images, remove the folder, or pass --skip-bad-images"
                )
            empty.append(f"{cls}/")
        for e in entries:
            st = e.stat()
            files.append((f"{cls}/{e.name}", label, st.st_size, st.st_mtime_ns))
    return classes, files, empty


def load_image_folder(
    root: str | os.PathLike[str],
    split: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    resize: str = "cifar",
    skip_bad_images: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> ImageData:
    """Loads ``root/<split>/<class>/<image>`` (sorted classes = labels, sorted files), cached.

    See :func:`load_split` for the arguments. The decoded tensor is cached under
    ``<cache>/imagefolder/<key>.pt`` where ``key`` hashes the resolved folder, the split, every
    file's relative path, size and mtime, and the resize setting.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise NndistError(f"data folder {root} does not exist; pass --data PATH to an image folder with train/ and test/")
    classes, files, empty = _list_split(root, split, skip_bad_images)
    key_src = json.dumps(
        [_CACHE_VERSION, str(root), split, image_size, resize, classes, [f[0:1] + f[2:] for f in files]]
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    cache_file = cache_root(cache_dir) / "imagefolder" / f"{root.name}-{split}-{key}.pt"
    cached = _read_cache(cache_file)
    if cached is None:
        cached = _decode_folder(root, split, classes, files, image_size, resize, progress, workers)
        try:
            with atomic_path(cache_file) as tmp:
                torch.save(cached, tmp)
        except OSError:
            pass  # a read-only cache only costs decoding time
    bad: dict[str, str] = cached["bad"]
    if bad and not skip_bad_images:
        rel, reason = next(iter(bad.items()))
        raise NndistError(
            f"{root / split / rel}: {reason}; remove or replace it, or pass --skip-bad-images "
            f"({len(bad)} bad file(s) in {root / split})"
        )
    return ImageData(
        images=cached["images"],
        labels=cached["labels"],
        classes=list(classes),
        source=str(root),
        split=split,
        files=list(cached["files"]),
        bad_files=empty + list(bad),
    )


def _read_cache(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None
    if not isinstance(obj, dict) or not {"images", "labels", "files", "bad"} <= set(obj):
        return None
    return obj


def _decode_folder(
    root: Path,
    split: str,
    classes: list[str],
    files: list[tuple[str, int, int, int]],
    image_size: int | None,
    resize: str,
    progress: bool,
    workers: int | None,
) -> dict[str, Any]:
    split_dir = root / split

    def work(rel: str) -> torch.Tensor | str:
        path = split_dir / rel
        try:
            data = path.read_bytes()
            im = _decode(data, path)
        except (OSError, ValueError) as exc:
            return str(exc)
        if image_size is not None or resize == "imagenet":
            im = resize_one(im, image_size, resize)
        return im

    n_workers = workers or min(8, (os.cpu_count() or 1) * 2)
    images: list[torch.Tensor] = []
    kept: list[str] = []
    labels: list[int] = []
    bad: dict[str, str] = {}
    shape: tuple[int, ...] | None = None
    first = ""
    with ThreadPoolExecutor(n_workers) as pool, progress_bar(
        len(files), f"decode {root.name}/{split}", "img", enabled=progress, leave=False
    ) as bar:
        # Reading and decoding release the GIL; map keeps the sorted order.
        for (rel, label, _, _), out in zip(files, pool.map(work, [f[0] for f in files], chunksize=64)):
            bar.update(1)
            if isinstance(out, str):
                bad[rel] = out
                continue
            if shape is None:
                shape, first = tuple(out.shape), rel
            elif tuple(out.shape) != shape:
                raise NndistError(
                    f"{split_dir / rel} is {out.shape[2]}x{out.shape[1]} but {split_dir / first} is "
                    f"{shape[2]}x{shape[1]}: images differ in size; pass --image-size N (or --resize imagenet)"
                )
            images.append(out)
            kept.append(rel)
            labels.append(label)
    if not images:
        raise NndistError(f"{split_dir} holds no readable images; check the folder or pass --data PATH")
    return {
        "images": torch.stack(images),  # (N, 3, H, W) uint8
        "labels": torch.tensor(labels, dtype=torch.int64),
        "files": kept,
        "bad": bad,
    }
