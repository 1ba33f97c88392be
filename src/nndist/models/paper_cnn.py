"""The CNN of the paper's Table 1, and its training forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NndistError
from ..paper import CIFAR10_MEAN, CIFAR10_STD
from .registry import MODELS, ModelSpec

__all__ = ["PaperCNN", "paper_cnn_forward"]


class PaperCNN(nn.Module):
    """The CNN of the paper's Table 1.

    conv1 (3,16,3,1,1) - ReLU - MaxPool 2 - conv2 (16,16,3,1,1) - ReLU - MaxPool 2 -
    conv3 (16,16,3,1,1) - ReLU - Flatten (16*8*8 = 1024) - fc1 (1024, 512) - ReLU - fc2 (512, 10).
    535,018 parameters with 10 classes. Activations and pools are modules (``relu1``, ``pool1``,
    ...) so that they can be hooked like any layer.
    """

    input_size = (3, 32, 32)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 16, 3, 1, 1)
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 8 * 8, 512)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Checked on the trailing dims so that torch.func.vmap (which hides the batch dim) works.
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.input_size:
            got = "x".join(map(str, x.shape[-3:])) if x.dim() >= 3 else str(tuple(x.shape))
            raise NndistError(
                f"the paper CNN needs 3x32x32 inputs (channels x height x width), got {got} "
                f"(batch shape {tuple(x.shape)}); use 32x32 RGB images: resize the image folder, "
                "or pass --image-size 32 where the command has it (nndist evaluate)"
            )
        x = self.pool1(self.relu1(self.conv1(x)))  # (B, 16, 16, 16)
        x = self.pool2(self.relu2(self.conv2(x)))  # (B, 16, 8, 8)
        x = self.relu3(self.conv3(x))  # (B, 16, 8, 8)
        x = self.flatten(x)  # (B, 1024)
        x = self.relu4(self.fc1(x))  # (B, 512)
        return self.fc2(x)  # (B, num_classes)


MODELS.add(
    "paper_cnn",
    ModelSpec(
        factory=lambda num_classes: PaperCNN(num_classes),
        input_size=(3, 32, 32),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        description="3-conv CNN of the paper's Table 1 (535,018 parameters, 3x32x32 inputs)",
    ),
)


def paper_cnn_forward(model: PaperCNN, x: torch.Tensor) -> torch.Tensor:
    """The paper CNN's forward for training: channels-last, each max pooling before its ReLU.

    Max pooling of channels-last activations is much faster on CPUs (``benchmarks/bench_training.py``);
    pooling before the ReLU gives the same values and the same gradients (max commutes with a
    monotone function, and the pooled maximum is the one the ReLU then passes or blocks). Tested
    against ``model(x)`` in float64, ties included.

    Args:
        model: a :class:`PaperCNN`.
        x: (B, 3, 32, 32) inputs.

    Returns:
        (B, num_classes) outputs, equal to ``model(x)``.
    """
    h = x.contiguous(memory_format=torch.channels_last)
    h = F.relu(F.max_pool2d(model.conv1(h), 2))  # (B, 16, 16, 16)
    h = F.relu(F.max_pool2d(model.conv2(h), 2))  # (B, 16, 8, 8)
    h = F.relu(model.conv3(h))  # (B, 16, 8, 8)
    h = h.reshape(h.shape[0], -1)  # nn.Flatten's (c, y, x) order: reshape reads the logical layout
    return model.fc2(F.relu(model.fc1(h)))
