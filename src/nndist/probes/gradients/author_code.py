r"""``definition="author_code"``: the quantities of the author's published code, and its layer indices.

The code is ``fxnnxc/hex`` on GitHub, folder
``experiments/3_distributions_in_deep_neural_networks/channel_gradients/`` (read at commit
``6f6060ee8d666bc64601c44f42b6a0b976e85bfd``). Line numbers below are of that commit.

======================  ===================================================  =====================================================
                        paper (section 2.2)                                  code
======================  ===================================================  =====================================================
Emission of ``c1``      ``sum_{c2} ||LG^{c1->c2}||`` (eq. 19)                ``sqrt(sum_{c2} ||LG^{c1->c2}||^2)``: one norm of
                                                                             ``conv2d_input(A.shape, W[c1], G[:, c1])`` over all
                                                                             input channels (``hook_wrapper.py`` 15-25)
Absorption              ``Ab^{c2} = sum_{c1} ||LG^{c1->c2}||`` per *input*   ``||G[c1]||``, the gradient arriving at *output*
                        channel (eq. 20)                                     channel ``c1`` (``hook_wrapper.py`` 30-31, stored as
                                                                             ``bw_out``; ``save_plot.py`` 21, 73 label it "Ab")
backward seed           not stated                                           ``output.backward(gradient=class_score)`` with
                                                                             ``class_score = softmax(output)[y]`` at the true class
                                                                             ``y`` and zero elsewhere (``run.py`` 107-112)
batch, mode             not stated                                           one image per pass (``run.py`` 98-99); the model in
                                                                             ``train()`` (``run.py`` 68): BatchNorm on that image's
                                                                             own statistics
models, data            ResNets on "Imagenet21K validation images"           torchvision ResNet-18/34/50/101/152 with ``DEFAULT``
                                                                             (ImageNet-1K) weights (``run.py`` 13-38) on ILSVRC2012
                                                                             val (``run.py`` 65, 81), resize 256, centre crop 224,
                                                                             ImageNet mean/std (``run.py`` 69-77)
layers, channels        "first 15 channels"                                  one target layer per pass, indexed as in
                                                                             :func:`layers_like_author` (``hook_wrapper.py``
                                                                             75-103; lists in ``run_*.sh``); ``MAX_SAMPLES = 15``
                                                                             output channels (``hook_wrapper.py`` 17-18, 27, 30)
figure                                                                       seaborn box plots without fliers, Absorption on the
                                                                             first row and Emission on the second
                                                                             (``save_plot.py`` 21, 53, 57, 64-73)
======================  ===================================================  =====================================================

Further facts of the code: ``grad_inputs[0]``, the gradient at the layer's input, is recomputed by
``conv2d_input`` with the same weight and returned (``hook_wrapper.py`` 11-12, 38), which leaves
the backward pass unchanged; the norms of ``dL/dA[c2]`` are stored as ``bw_in`` (lines 27-28) but
not plotted. ``num_channels`` and ``random_indices`` (lines 70-73) are unused: the first 15 channels
are taken. Running statistics are updated by every train-mode forward in the code, which does not
change what it measures (train-mode BatchNorm normalises by the batch's statistics).

What :func:`~nndist.probes.gradients.emission_absorption` does under ``definition="author_code"``: the
model runs in ``train()`` mode (dropout, if any, is then active as well), one sample per pass,
with the per-sample "loss" :func:`author_seed` (its gradient at the logits is the code's seed);
each layer's ``emission`` is the code's Emission and ``absorption`` the code's Absorption, both
``(B, C_out)`` and for all channels (the figure keeps the first 15). Every buffer (running
statistics, ``num_batches_tracked``, spectral-norm vectors) is put back after each sample and at
the end, and every module's ``training`` flag is restored: measuring does not change the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import NndistError

AUTHOR_CODE = (
    "https://github.com/fxnnxc/hex/tree/6f6060ee8d666bc64601c44f42b6a0b976e85bfd/"
    "experiments/3_distributions_in_deep_neural_networks/channel_gradients"
)

# torchvision ResNets: block type and blocks per stage (torchvision.models.resnet).
RESNET_BLOCKS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

# The target-layer indices of run_{18,34,50,101,152}.sh. run_18.sh loops over 16 only and lists
# "0 1 6 9 16" in a comment on that line; the other four loop over the five indices given here.
AUTHOR_TARGET_LAYERS: dict[int, tuple[int, ...]] = {
    18: (0, 1, 6, 9, 16),
    34: (0, 1, 15, 25, 30),
    50: (0, 1, 30, 39, 45),
    101: (0, 1, 45, 79, 95),
    152: (0, 1, 75, 100, 150),
}


def author_seed(outputs: Tensor, targets: Tensor | None) -> Tensor:
    """Per-sample ``p_y * z_y`` with ``p_y`` the softmax probability of class ``y`` held constant.

    Its gradient at the logits ``z`` is ``p_y e_y``: the code's ``class_score`` (``run.py`` 108-112),
    which ``output.backward(gradient=class_score)`` treats as a constant.

    Args:
        outputs: Logits ``(B, classes)``.
        targets: True classes ``(B,)``.

    Returns:
        ``(B,)``.
    """
    if targets is None:
        raise NndistError("definition='author_code' needs targets (the code seeds the backward pass at the true class)")
    if not isinstance(outputs, Tensor) or outputs.dim() != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise NndistError(f"definition='author_code' needs logits of shape (B, classes), got {shape}")
    y = targets.reshape(-1, 1).to(outputs.device)
    p = torch.softmax(outputs.detach(), dim=-1).gather(1, y)
    return (p * outputs.gather(1, y))[:, 0]


def layers_like_author(model_or_depth: nn.Module | int) -> list[str]:
    """Module names of the code's target layers, in the code's index order (torchvision ResNets).

    Index 0 is the stem ``conv1``; then, stage by stage and block by block, the block's ``conv1``,
    ``conv2`` and (bottleneck blocks) ``conv3``. Downsample convolutions are not counted
    (``hook_wrapper.py`` 75-103). ``layers_like_author(50)[45]`` is the layer that ``run_50.sh``
    calls target layer 45.

    Args:
        model_or_depth: A torchvision-style ResNet (``conv1``, ``layer1`` ... ``layer4``), or a depth
            in ``RESNET_BLOCKS`` (18, 34, 50, 101, 152).

    Returns:
        The names, as in ``model.named_modules()``.

    Raises:
        NndistError: For an unknown depth or a model without that structure.
    """
    if isinstance(model_or_depth, int):
        if model_or_depth not in RESNET_BLOCKS:
            raise NndistError(f"no torchvision ResNet of depth {model_or_depth}; known: {sorted(RESNET_BLOCKS)}")
        kind, blocks = RESNET_BLOCKS[model_or_depth]
        convs = ("conv1", "conv2", "conv3") if kind == "bottleneck" else ("conv1", "conv2")
        return ["conv1"] + [
            f"layer{s + 1}.{b}.{c}" for s, n in enumerate(blocks) for b in range(n) for c in convs
        ]
    model = model_or_depth
    stages = [getattr(model, f"layer{s}", None) for s in range(1, 5)]
    if not isinstance(getattr(model, "conv1", None), nn.Conv2d) or any(s is None for s in stages):
        raise NndistError(
            f"{type(model).__name__} is not a torchvision-style ResNet (conv1, layer1..layer4): "
            "the code's layer indices are defined for those only"
        )
    names = ["conv1"]
    for s, stage in enumerate(stages, start=1):
        for b, block in enumerate(stage):  # type: ignore[arg-type]
            names += [f"layer{s}.{b}.{c}" for c in ("conv1", "conv2", "conv3") if hasattr(block, c)]
    return names
