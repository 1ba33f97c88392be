"""``nndist evaluate`` as one call: a model (name with weights, or a checkpoint) on a data split."""

from __future__ import annotations

from typing import Any

from ..data import load_split, resolve_samples, stratified_subset
from ..errors import NndistError
from ..models import evaluate, load_model
from .options import resolve_device

__all__ = ["evaluate_model"]


def evaluate_model(
    model: str,
    weights: str | None = None,
    *,
    data: str = "cifar10",
    split: str = "test",
    samples: int | str = "all",
    seed: int = 0,
    batch_size: int = 256,
    image_size: int | None = None,
    resize: str | None = None,
    skip_bad_images: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Top-1 accuracy and mean cross-entropy of a model on a (class-stratified subset of a) split.

    Args:
        model: a registered name (with ``weights``), ``torchvision:<name>``, or a checkpoint path.
        weights: a checkpoint path or torchvision weights name.
        data, split: the data source and split.
        samples: how many samples (``all`` or a count), class-stratified with ``seed``.
        batch_size: images per forward pass.
        image_size, resize: resizing of image folders (default: the model's own rule).
        skip_bad_images: skip unreadable images (listed in the result).
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        ``{"top1": percent, "n": count, "loss": mean cross-entropy, "bad_files": [...]}``.

    Raises:
        NndistError: a bad option, model, checkpoint or data source.
    """
    if batch_size < 1:
        raise NndistError(f"--batch-size must be positive, got {batch_size}")
    dev = resolve_device(device)
    net, info = load_model(model, weights)
    spec = info["spec"]
    images = load_split(data, split, image_size=image_size, resize=resize or spec.resize,
                        skip_bad_images=skip_bad_images, progress=progress)
    n = resolve_samples(samples, len(images), option="--samples", what=f"the {split} split of {data}")
    if samples != "all":
        images = images.subset(stratified_subset(images.labels, n, seed=seed))
    result = evaluate(net, images, batch_size=batch_size, device=dev, progress=progress, mean=spec.mean, std=spec.std)
    return {**result, "bad_files": list(images.bad_files)}
