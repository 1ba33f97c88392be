"""Data: shapes, image folders (order, cache, bad input), CIFAR-10 offline, subsets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nndist.data.folder as data_mod
from nndist.data import (
    DATASETS,
    ImageData,
    generate_shapes,
    load_split,
    random_inputs,
    stratified_subset,
)
from nndist.errors import NndistError, UnknownNameError
from nndist.paper import CIFAR10_MEAN, CIFAR10_STD

# ------------------------------------------------------------------------------- helpers


def _write(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (8, 8), fmt: str = "PNG", mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)


def make_folder(root: Path, classes: tuple[str, ...] = ("b_cat", "a_dog"), per_class: int = 3) -> Path:
    """An image folder where the red channel encodes (split, class index, file index)."""
    for split in ("train", "test"):
        for ci, cls in enumerate(sorted(classes)):
            for j in range(per_class):
                _write(root / split / cls / f"{j:02d}.png", (10 * ci + j, 50, 100 if split == "train" else 200))
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "imgs")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ------------------------------------------------------------------------------- shapes


def test_shapes_deterministic_and_balanced() -> None:
    a = load_split("shapes", "train", progress=False)
    b = load_split("shapes", "train", progress=False)
    assert a.images.shape == (5000, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.labels.dtype == torch.int64 and len(a.classes) == 10
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.bincount(a.labels).tolist() == [500] * 10
    test = load_split("shapes", "test", progress=False)
    assert len(test) == 1000 and not torch.equal(test.images[:10], a.images[:10])
    other = load_split("shapes", "train", n=100, seed=1, progress=False)
    assert len(other) == 100 and not torch.equal(other.images, a.images[:100])


def test_shapes_fast() -> None:
    import time

    t = time.perf_counter()
    generate_shapes(6000, seed=0)
    assert time.perf_counter() - t < 5.0  # < 2 s on an idle laptop core; slack for busy CI


def test_shapes_learnable_by_nearest_class_mean() -> None:
    """A proxy of learnability: class means of pixels already separate the classes."""
    train, test = generate_shapes(3000, seed=0), generate_shapes(1000, seed=1)

    def feats(d: ImageData) -> torch.Tensor:
        # Grey-level after per-image standardisation: colour carries no class information.
        g = d.images.float().mean(1).flatten(1)
        return (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-6)

    xtr, xte = feats(train), feats(test)
    means = torch.stack([xtr[train.labels == c].mean(0) for c in range(10)])
    pred = torch.cdist(xte, means).argmin(1)
    acc = float((pred == test.labels).float().mean())
    assert acc > 0.3  # chance is 0.1


def test_normalized_and_subset() -> None:
    d = generate_shapes(20, seed=0)
    x = d.normalized(CIFAR10_MEAN, CIFAR10_STD, indices=[3, 1])
    assert x.dtype == torch.float32 and x.shape == (2, 3, 32, 32)
    ref = (d.images[3].double() / 255 - torch.tensor(CIFAR10_MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(CIFAR10_STD, dtype=torch.float64)[:, None, None]
    assert torch.allclose(x[0].double(), ref, atol=1e-5)
    s = d.subset(np.array([5, 0]))
    assert torch.equal(s.images[0], d.images[5]) and s.labels.tolist() == [int(d.labels[5]), int(d.labels[0])]


# ------------------------------------------------------------------------------- image folder


def test_folder_order_and_labels(folder: Path, cache: Path) -> None:
    d = load_split(folder, "train", cache_dir=cache, progress=False)
    assert d.classes == ["a_dog", "b_cat"]
    assert d.files == [f"{c}/{j:02d}.png" for c in ("a_dog", "b_cat") for j in range(3)]
    assert d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.images.shape == (6, 3, 8, 8) and d.images.dtype == torch.uint8
    assert d.images[:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12]
    assert int(d.images[0, 2, 0, 0]) == 100
    t = load_split(str(folder), "test", cache_dir=cache, progress=False)
    assert int(t.images[0, 2, 0, 0]) == 200 and t.split == "test" and d.bad_files == []


def test_folder_grayscale_rgba_jpeg(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "mixed"
    for split in ("train", "test"):
        _write(root / split / "a" / "g.png", (120, 120, 120), mode="L")
        _write(root / split / "a" / "r.png", (10, 20, 30), mode="RGBA")
        _write(root / split / "b" / "j.jpg", (200, 100, 50), fmt="JPEG")
        _write(root / split / "b" / "p.bmp", (1, 2, 3), fmt="BMP")
    d = load_split(root, "train", cache_dir=cache, progress=False)
    assert d.images.shape == (4, 3, 8, 8)
    assert d.images[0, :, 0, 0].tolist() == [120, 120, 120]
    assert d.images[1, :, 0, 0].tolist() == [10, 20, 30]
    assert d.images[3, :, 0, 0].tolist() == [1, 2, 3]
    assert abs(int(d.images[2, 0, 0, 0]) - 200) < 5  # JPEG is lossy


def test_folder_cache_hit_does_not_decode(folder: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_split(folder, "train", cache_dir=cache, progress=False)
    assert len(list((cache / "imagefolder").glob("*.pt"))) == 1

    def fail(*args: object) -> None:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(data_mod, "_decode", fail)
    second = load_split(folder, "train", cache_dir=cache, progress=False)
    assert torch.equal(first.images, second.images) and second.files == first.files


def test_folder_cache_env_var(folder: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNDIST_CACHE", str(cache))
    load_split(folder, "test", progress=False)
    assert list((cache / "imagefolder").glob("*test*.pt"))


def test_folder_cache_invalidated_when_a_file_changes(folder: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_split(folder, "train", cache_dir=cache, progress=False)
    calls = []
    real = data_mod._decode
    monkeypatch.setattr(data_mod, "_decode", lambda b, p: calls.append(p) or real(b, p))
    target = folder / "train" / "b_cat" / "01.png"
    _write(target, (99, 99, 99))
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    d = load_split(folder, "train", cache_dir=cache, progress=False)
    assert calls and int(d.images[4, 0, 0, 0]) == 99
    calls.clear()
    (folder / "train" / "a_dog" / "00.png").unlink()
    d = load_split(folder, "train", cache_dir=cache, progress=False)
    assert calls and len(d) == 5


def test_folder_corrupt_cache_is_rebuilt(folder: Path, cache: Path) -> None:
    load_split(folder, "train", cache_dir=cache, progress=False)
    for f in (cache / "imagefolder").glob("*.pt"):
        f.write_bytes(b"junk")
    assert len(load_split(folder, "train", cache_dir=cache, progress=False)) == 6


BAD_FILES = {
    "corrupt_jpeg": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "x.jpg", "corrupt|not an image"),
    "zero_byte": (b"", "z.png", "zero-byte"),
    "not_an_image": (b"hello, I am text\n", "t.jpg", "not an image"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_image_error_and_skip(folder: Path, cache: Path, kind: str) -> None:
    content, name, msg = BAD_FILES[kind]
    bad = folder / "train" / "a_dog" / name
    bad.write_bytes(content)
    with pytest.raises(NndistError, match=msg) as info:
        load_split(folder, "train", cache_dir=cache, progress=False)
    text = str(info.value)
    assert str(bad) in text and "--skip-bad-images" in text and "\n" not in text
    d = load_split(folder, "train", cache_dir=cache, skip_bad_images=True, progress=False)
    assert d.bad_files == [f"a_dog/{name}"] and len(d) == 6
    # The cache written while skipping must not hide the error from a strict load.
    with pytest.raises(NndistError, match=msg):
        load_split(folder, "train", cache_dir=cache, progress=False)


def test_truncated_jpeg(folder: Path, cache: Path) -> None:
    good = folder / "train" / "a_dog" / "t.jpg"
    _write(good, (1, 2, 3), size=(32, 32), fmt="JPEG")
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(NndistError, match="t.jpg"):
        load_split(folder, "train", cache_dir=cache, progress=False)


def test_empty_class_folder(folder: Path, cache: Path) -> None:
    (folder / "train" / "c_empty").mkdir()
    with pytest.raises(NndistError, match="c_empty has no images"):
        load_split(folder, "train", cache_dir=cache, progress=False)
    d = load_split(folder, "train", cache_dir=cache, skip_bad_images=True, progress=False)
    assert d.classes == ["a_dog", "b_cat", "c_empty"] and d.bad_files == ["c_empty/"]


def test_missing_split(folder: Path, cache: Path) -> None:
    import shutil

    shutil.rmtree(folder / "test")
    with pytest.raises(NndistError, match="test does not exist.*train/ and test/"):
        load_split(folder, "test", cache_dir=cache, progress=False)


def test_no_class_folders(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "flat" / "train").mkdir(parents=True)
    _write(tmp_path / "flat" / "train" / "loose.png", (0, 0, 0))
    with pytest.raises(NndistError, match="no class folders"):
        load_split(tmp_path / "flat", "train", cache_dir=cache, progress=False)


def test_missing_folder_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(NndistError, match="does not exist.*--data PATH"):
        load_split(tmp_path / "nowhere", "train")
    with pytest.raises(UnknownNameError, match="cifar10.*shapes"):
        load_split("imagenet", "train")
    with pytest.raises(NndistError, match="split"):
        load_split("shapes", "valid")


def test_mixed_sizes(folder: Path, cache: Path) -> None:
    _write(folder / "train" / "b_cat" / "big.png", (0, 0, 0), size=(16, 12))
    with pytest.raises(NndistError, match="big.png.*--image-size"):
        load_split(folder, "train", cache_dir=cache, progress=False)
    d = load_split(folder, "train", cache_dir=cache, image_size=10, progress=False)
    assert d.images.shape == (7, 3, 10, 10)
    d = load_split(folder, "train", cache_dir=cache, resize="imagenet", image_size=8, progress=False)
    assert d.images.shape == (7, 3, 8, 8)


def test_imagenet_resize_default(folder: Path, cache: Path) -> None:
    _write(folder / "test" / "a_dog" / "wide.png", (5, 5, 5), size=(300, 260))
    d = load_split(folder, "test", cache_dir=cache, resize="imagenet", progress=False)
    assert d.images.shape[1:] == (3, 224, 224)


# ------------------------------------------------------------------------------- CIFAR-10


def test_cifar10_offline_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import CIFAR10

    def no_network(self: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(CIFAR10, "download", no_network)
    with pytest.raises(NndistError, match="--data PATH.*train/ and test/"):
        load_split("cifar10", "test", cache_dir=tmp_path / "empty")
    assert "cifar10" in DATASETS and "shapes" in DATASETS


# ------------------------------------------------------------------------------- subsets


def test_stratified_subset_balanced_sorted_deterministic() -> None:
    labels = torch.arange(1000) % 10
    idx = stratified_subset(labels, 95, seed=0)
    assert len(idx) == 95 and len(set(idx.tolist())) == 95
    assert np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx].numpy(), minlength=10)
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(idx, stratified_subset(labels, 95, seed=0))
    assert not np.array_equal(idx, stratified_subset(labels, 95, seed=1))
    assert np.array_equal(stratified_subset(labels, "all", seed=0), np.arange(1000))
    assert len(stratified_subset(labels, 1000, seed=0)) == 1000


def test_stratified_subset_proportional() -> None:
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    idx = stratified_subset(labels, 100, seed=0)
    assert np.bincount(labels[idx]).tolist() == [60, 30, 10]
    # Works as an index of ImageData.labels (a torch tensor).
    assert torch.as_tensor(labels)[idx].shape == (100,)


def test_stratified_subset_too_large() -> None:
    with pytest.raises(NndistError, match="11.*10"):
        stratified_subset(list(range(10)), 11, seed=0)
    with pytest.raises(NndistError):
        stratified_subset([0, 1], "some", seed=0)


def test_random_inputs() -> None:
    a = random_inputs(2000, (3, 8, 8), seed=0)
    assert a.shape == (2000, 3, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, random_inputs(2000, (3, 8, 8), seed=0))
    assert not torch.equal(a, random_inputs(2000, (3, 8, 8), seed=1))
    assert abs(float(a.mean())) < 0.01 and float(a.std()) == pytest.approx(1.0, abs=0.01)


@pytest.mark.data
def test_real_cifar_folder_layout(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    d = load_split(cifar_dir, "test", cache_dir=tmp_path_factory.mktemp("c"), progress=False)
    assert d.images.shape == (10000, 3, 32, 32)
    assert d.classes[:3] == ["airplane", "automobile", "bird"]
    assert torch.bincount(d.labels).tolist() == [1000] * 10
