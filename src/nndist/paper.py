"""The paper's settings, in one place (Park, "Distributions in Deep Neural Networks").

Everything a study, a claim or a figure takes from the paper is defined here and imported
elsewhere: the studied layers of Table 1, the initialisation schemes of section 2.1, the training
setting of section 3 (Adam, learning rate 1e-4, batch 64, no weight decay), the run profiles, the
normalisation constants of the data sets and the 15 channels of Figure 4. This module imports
nothing, so any layer may use it.
"""

from __future__ import annotations

from typing import Any

#: The layers whose distributions the paper analyses (starred in Table 1).
PAPER_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "fc1")

#: The initialisation schemes compared in section 3 (Kaiming and Xavier in both flavours).
PAPER_INITS: tuple[str, ...] = (
    "orthogonal", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "ones", "zeros",
)
#: Schemes that start every weight at the same value (claims about shapes leave them out).
CONSTANT_INITS: tuple[str, ...] = ("ones", "zeros")

#: Section 3: "Adam optimizer with learning rate 0.0001, and batch size 64 ... no weight decay".
PAPER_LR = 1e-4
PAPER_BATCH_SIZE = 64
PAPER_WEIGHT_DECAY = 0.0
#: Figure 1 trains for 50 epochs.
PAPER_EPOCHS = 50

#: Run profiles of ``nndist reproduce``: option defaults that a flag overrides.
PROFILES: dict[str, dict[str, Any]] = {
    # About 10K train / 2K valid images, 3 epochs, all seven inits: minutes on a laptop CPU.
    "quick": {"epochs": 3, "train_samples": 10000, "valid_samples": 2000},
    # The paper's setting: all of CIFAR-10, 50 epochs.
    "paper": {"epochs": PAPER_EPOCHS, "train_samples": "all", "valid_samples": "all"},
}

#: The input types of the feature distributions (section 3: "train, valid, and random").
INPUT_TYPES: tuple[str, ...] = ("train", "valid", "random")

#: Figure 4 shows "the first 15 channels".
FIGURE4_CHANNELS = 15

#: Per-channel mean and std of CIFAR-10's [0, 1] training pixels.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
#: ImageNet's, used by torchvision's weights and by the CIFAR ResNet checkpoints.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
