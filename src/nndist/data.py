"""Image data by name: CIFAR-10, a procedural ``shapes`` set, or any image folder.

A data source is a registry name or a path::

    test = load_split("cifar10", "test")                       # torchvision's CIFAR10, cached
    test = load_split("shapes", "test")                        # generated, no download
    test = load_split("../shared/data/cifar10-jpeg", "test")   # image folder with train/ and test/

Every source gives an :class:`ImageData`: all images decoded once into one uint8 tensor
``(N, 3, H, W)`` with int64 labels, normalised on demand batch by batch
(:meth:`ImageData.normalized`). Image folders are decoded once and cached on disk under
``NNDIST_CACHE`` (default ``~/.cache/nndist``), keyed by the folder, the split, every file's
name, size and mtime, and the resize setting, so a changed file invalidates the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import NndistError
from .io import atomic_path
from .registry import Registry

__all__ = [
    "DATASETS",
    "ImageData",
    "load_split",
    "load_image_folder",
    "load_cifar10",
    "generate_shapes",
    "stratified_subset",
    "random_inputs",
    "cache_root",
    "SHAPES_CLASSES",
    "IMAGE_EXTENSIONS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SPLITS = ("train", "test")
RESIZE_MODES = ("cifar", "imagenet")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_CACHE_VERSION = 1


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


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

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


def _resize_batch(images: torch.Tensor, image_size: int | None, resize: str) -> torch.Tensor:
    """Resizes a uint8 batch ``(N, 3, H, W)`` that shares one size."""
    if image_size is None and resize == "cifar":
        return images
    return torch.stack([_resize_one(im, image_size, resize) for im in images]) if len(images) else images


def _resize_one(im: torch.Tensor, image_size: int | None, resize: str) -> torch.Tensor:
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


# ----------------------------------------------------------------------------- image folders


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
    from tqdm.auto import tqdm

    split_dir = root / split

    def work(rel: str) -> torch.Tensor | str:
        path = split_dir / rel
        try:
            data = path.read_bytes()
            im = _decode(data, path)
        except (OSError, ValueError) as exc:
            return str(exc)
        if image_size is not None or resize == "imagenet":
            im = _resize_one(im, image_size, resize)
        return im

    n_workers = workers or min(8, (os.cpu_count() or 1) * 2)
    images: list[torch.Tensor] = []
    kept: list[str] = []
    labels: list[int] = []
    bad: dict[str, str] = {}
    shape: tuple[int, ...] | None = None
    first = ""
    with ThreadPoolExecutor(n_workers) as pool, tqdm(
        total=len(files), desc=f"decode {root.name}/{split}", unit="img", disable=not progress, leave=False
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


# ----------------------------------------------------------------------------- CIFAR-10


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
    images = _resize_batch(images, image_size, resize)
    return ImageData(
        images=images,
        labels=torch.tensor(ds.targets, dtype=torch.int64),
        classes=list(ds.classes),
        source="cifar10",
        split=split,
    )


DATASETS.add("cifar10", load_cifar10)


# ----------------------------------------------------------------------------- shapes

SHAPES_CLASSES = (
    "circle", "square", "triangle", "cross", "ring",
    "horizontal_bar", "vertical_bar", "diamond", "plus", "ellipse",
)
SHAPES_SIZES = {"train": 5000, "test": 1000}
_SHAPES_SPLIT_SEED = {"train": 0, "test": 1_000_003}


def _shape_mask(c: int, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean mask of class ``c`` at pixel offsets ``dx, dy`` from the centre, radius ``r`` (broadcast)."""
    ax, ay = np.abs(dx), np.abs(dy)
    w = 0.3 * r  # stroke half-width
    if c == 0:  # circle
        return dx * dx + dy * dy <= r * r
    if c == 1:  # square
        return np.maximum(ax, ay) <= 0.8 * r
    if c == 2:  # triangle, apex up
        return (dy <= 0.8 * r) & (ax <= 0.55 * (dy + r))
    if c == 3:  # cross (X)
        return (np.maximum(ax, ay) <= r) & ((np.abs(dx - dy) <= 1.2 * w) | (np.abs(dx + dy) <= 1.2 * w))
    if c == 4:  # ring
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if c == 5:  # horizontal bar
        return (ay <= w) & (ax <= r)
    if c == 6:  # vertical bar
        return (ax <= w) & (ay <= r)
    if c == 7:  # diamond
        return ax + ay <= r
    if c == 8:  # plus
        return (np.maximum(ax, ay) <= r) & ((ax <= w) | (ay <= w))
    if c == 9:  # ellipse, wider than tall
        return (dx / r) ** 2 + (dy / (0.55 * r)) ** 2 <= 1
    raise ValueError(c)


def generate_shapes(
    n: int,
    *,
    seed: int = 0,
    image_size: int = 32,
    noise: float = 0.06,
    split: str = "train",
) -> ImageData:
    """A learnable 10-class set of coloured shapes on noisy backgrounds (vectorised, seeded).

    Each image shows one shape of :data:`SHAPES_CLASSES` with a random centre (jittered by up
    to 15% of the side), size and bright colour on a random dark background with Gaussian pixel
    noise, so the class is in the shape, never in the colour. Labels cycle
    through the classes before shuffling, so classes are balanced (±1).

    Args:
        n: Number of images.
        seed: Seed; the same seed gives the same images.
        image_size: Side length S of the S x S images.
        noise: Std of the pixel noise (on the [0, 1] scale).
        split: Only recorded in the result.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPES_CLASSES))
    s = float(image_size)
    r = (rng.uniform(0.28, 0.42, n) * s).astype(np.float32)  # radius
    cx = (s / 2 + rng.uniform(-0.15, 0.15, n) * s).astype(np.float32)  # centre jitter
    cy = (s / 2 + rng.uniform(-0.15, 0.15, n) * s).astype(np.float32)
    grid = np.arange(image_size, dtype=np.float32) + 0.5
    mask = np.zeros((n, image_size, image_size), dtype=bool)
    for c in range(len(SHAPES_CLASSES)):
        sel = np.flatnonzero(labels == c)
        dx = grid[None, None, :] - cx[sel, None, None]  # (n_c, 1, S)
        dy = grid[None, :, None] - cy[sel, None, None]  # (n_c, S, 1)
        mask[sel] = _shape_mask(c, dx, dy, r[sel, None, None])
    # Dark background, bright shape, random hues: the class is in the shape, not the colour.
    bg = rng.uniform(0.0, 0.4, (n, 3)).astype(np.float32)
    fg = rng.uniform(0.6, 1.0, (n, 3)).astype(np.float32)
    img = np.where(mask[:, None], fg[:, :, None, None], bg[:, :, None, None])  # (N, 3, S, S)
    img += rng.normal(0.0, noise, img.shape).astype(np.float32)
    images = torch.from_numpy(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8))
    return ImageData(
        images=images,
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(SHAPES_CLASSES),
        source="shapes",
        split=split,
    )


def _load_shapes(
    split: str,
    *,
    cache_dir: Any = None,
    image_size: int | None = None,
    resize: str = "cifar",
    skip_bad_images: bool = False,
    progress: bool = True,
    n: int | None = None,
    seed: int = 0,
) -> ImageData:
    """``shapes`` source: 5000 train / 1000 test images by default; train and test never share a draw."""
    count = SHAPES_SIZES[split] if n is None else int(n)
    data = generate_shapes(count, seed=seed * 2 + _SHAPES_SPLIT_SEED[split], split=split)
    if image_size is not None or resize == "imagenet":
        data.images = _resize_batch(data.images, image_size, resize)
    return data


DATASETS.add("shapes", _load_shapes)


# --------------------------------------------------------------------------------------------
# Subsets and random inputs
# --------------------------------------------------------------------------------------------


def stratified_subset(labels: Any, n: int | str, seed: int = 0) -> np.ndarray:
    """A deterministic, class-stratified subset of indices.

    Each class gets a share proportional to its frequency (largest remainders round, so a
    balanced set gets equal counts +-1), drawn at random within the class.

    Args:
        labels: Labels ``(N,)`` (tensor, array or list).
        n: Subset size, or ``"all"`` for every index.
        seed: Seed of the draw.

    Returns:
        Sorted int64 indices ``(n,)``.

    Raises:
        NndistError: If ``n`` exceeds the number of labels or is negative.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).ravel()
    total = len(y)
    if isinstance(n, str):
        if n != "all":
            raise NndistError(f"subset size must be a number or 'all', got {n!r}")
        return np.arange(total, dtype=np.int64)
    n = int(n)
    if n < 0 or n > total:
        raise NndistError(f"cannot take {n} samples from a data set of {total}; use at most {total} (or 'all')")
    classes, counts = np.unique(y, return_counts=True)
    exact = n * counts / total
    quota = np.floor(exact).astype(np.int64)
    rest = n - int(quota.sum())
    if rest:
        # Largest fractional parts first; ties broken by class order (stable sort).
        order = np.argsort(-(exact - quota), kind="stable")
        quota[order[:rest]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(y == c), size=int(q), replace=False) for c, q in zip(classes, quota)]
    out = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
    return np.sort(out).astype(np.int64)


def random_inputs(n: int, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """``n`` i.i.d. N(0, 1) inputs of ``shape`` (the paper's "random" input type), float32, seeded."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((int(n), *map(int, shape)), generator=gen, dtype=torch.float32)

