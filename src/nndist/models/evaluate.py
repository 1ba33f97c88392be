"""Top-1 accuracy and mean cross-entropy of a classifier on a data split."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..paper import IMAGENET_MEAN, IMAGENET_STD
from ..progress import progress_bar
from .registry import get_model_spec

__all__ = ["evaluate"]


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``data``.

    Args:
        model: The classifier; put in eval mode (and restored afterwards).
        data: An :class:`nndist.data.ImageData` (normalised batch by batch with ``mean``/``std``,
            by default the model spec's normalisation) or a tuple ``(inputs, labels)`` of
            already-normalised float inputs ``(N, C, H, W)`` and int labels ``(N,)``.
        batch_size: Images per forward pass.
        device: Where to run; default CUDA if available, else CPU.
        progress: Show progress (:func:`nndist.progress.progress_bar`).

    Returns:
        ``{"top1": percent, "n": count, "loss": mean cross-entropy}``.
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(data, (tuple, list)):
        inputs, labels = data
        n = int(labels.shape[0])

        def batch(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            return inputs[lo:hi].to(dev, torch.float32), labels[lo:hi].to(dev)

    else:
        if mean is None or std is None:
            name = getattr(model, "nndist_name", None)
            spec = get_model_spec(name) if isinstance(name, str) else None
            mean = mean or (spec.mean if spec else IMAGENET_MEAN)
            std = std or (spec.std if spec else IMAGENET_STD)
        n = len(data.labels)

        def batch(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.arange(lo, hi)
            return data.normalized(mean, std, indices=idx, device=dev), data.labels[lo:hi].to(dev)

    was_training = model.training
    model.to(dev).eval()
    correct, loss_sum = 0, 0.0
    try:
        with torch.no_grad():
            bar = progress_bar(n, "evaluate", "img", enabled=progress, leave=False)
            for lo in range(0, n, batch_size):
                x, y = batch(lo, min(n, lo + batch_size))
                logits = model(x)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                bar.update(len(y))
            bar.close()
    finally:
        model.train(was_training)
    if n == 0:
        return {"top1": math.nan, "n": 0, "loss": math.nan}
    return {"top1": 100.0 * correct / n, "n": n, "loss": loss_sum / n}
