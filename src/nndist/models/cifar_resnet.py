"""The CIFAR ResNets of He et al. 2016 (section 4.2), option-A shortcuts.

Module names match the public checkpoints (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``linear``) after the ``module.`` prefix is stripped, so they load with strict keys.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NndistError
from ..paper import IMAGENET_MEAN, IMAGENET_STD
from .registry import MODELS, ModelSpec

__all__ = ["BasicBlock", "CifarResNet", "ShortcutA"]


class ShortcutA(nn.Module):
    """Parameter-free shortcut ("option A"): subsample by 2, zero-pad channels by ``pad`` each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, C + 2*pad, H/2, W/2)
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2: conv-BN-ReLU, three stages of n blocks (16, 32, 64), pool, linear.

    Module names match the public checkpoints (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
    ``linear``) after the ``module.`` prefix is stripped.
    """

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise NndistError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.in_planes = 16
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():  # the original training code's init
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16, H, W)
        x = self.layer2(x)  # (B, 32, H/2, W/2)
        x = self.layer3(x)  # (B, 64, H/4, W/4)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 64)
        return self.linear(x)  # (B, num_classes)


def _resnet_factory(depth: int) -> Callable[[int], nn.Module]:
    def factory(num_classes: int) -> nn.Module:
        return CifarResNet(depth, num_classes)

    return factory


_RESNET_PARAMS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M"}
for _depth, _params in _RESNET_PARAMS.items():
    MODELS.add(
        f"cifar_resnet{_depth}",
        ModelSpec(
            factory=_resnet_factory(_depth),
            input_size=(3, 32, 32),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            description=f"CIFAR ResNet-{_depth} of He et al. 2016, option-A shortcuts ({_params} parameters)",
            extra={"depth": _depth},
        ),
    )
