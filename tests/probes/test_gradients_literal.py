"""Literal twins shared by the gradient tests: every ``LG^{c1->c2}`` map by autograd, one pair at a time.

``literal_local_gradients`` knows nothing of the kernels' algebra: for each channel pair it keeps
only the weight ``W[c1, c2]`` (a transposed convolution: ``W[c2, c1]``) and only ``G[c1]``, and asks
autograd for the gradient at input channel ``c2`` of the layer's own functional form. The
statistics of both definitions are then written out from those maps. The tests here check the
twin itself: summed over ``c1`` it is autograd's ``dL/dA`` with the full weight.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LayerFn = Callable[[Tensor, Tensor], Tensor]

# PyTorch warns that an even-kernel 'same' convolution pads a copy of its input: expected here.
SAME_PADDING_COPY = "ignore:Using padding='same' with even kernel lengths"
pytestmark = pytest.mark.filterwarnings(SAME_PADDING_COPY)


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def layer_fn(module: nn.Module) -> LayerFn:
    """``f(x, weight)``: the module's map without bias, for any weight (the same call as its forward)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[len(module.kernel_size)]
        return lambda x, w: fn(
            x, w, stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups,
            output_padding=module.output_padding,
        )
    if isinstance(module, nn.modules.conv._ConvNd):
        return lambda x, w: module._conv_forward(x, w, None)  # type: ignore[operator]
    if isinstance(module, nn.Linear):
        return lambda x, w: F.linear(x, w)
    raise TypeError(type(module))


def pair_index(module: nn.Module, c1: int, c2: int) -> tuple[int, int] | None:
    """Where ``W`` holds the pair ``c1 -> c2`` (``None`` across groups)."""
    groups = getattr(module, "groups", 1)
    w = module.weight
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        cin_g, cout_g = w.shape[0] // groups, w.shape[1]
        return (c2, c1 % cout_g) if c1 // cout_g == c2 // cin_g else None
    cout_g, cin_g = w.shape[0] // groups, w.shape[1]
    return (c1, c2 % cin_g) if c1 // cout_g == c2 // cin_g else None


def channels_last_dim(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def literal_local_gradients(module: nn.Module, x: Tensor, G: Tensor, weight: Tensor | None = None) -> Tensor:
    """``LG[b, c1, c2]`` over the input's positions: ``(B, C_out, C_in, *positions)``.

    For a linear layer on ``(B, *, C)`` the positions are the leading ``*`` (tokens).
    """
    fn = layer_fn(module)
    W = (module.weight if weight is None else weight).detach()
    a = x.detach().clone().requires_grad_()
    last = channels_last_dim(module)
    c_out = G.shape[-1] if last else G.shape[1]
    c_in = x.shape[-1] if last else x.shape[1]
    pos = tuple(x.shape[1:-1]) if last else tuple(x.shape[2:])
    out = torch.zeros(x.shape[0], c_out, c_in, *pos, dtype=G.dtype)
    for c1 in range(c_out):
        Gm = torch.zeros_like(G)
        if last:
            Gm[..., c1] = G[..., c1]
        else:
            Gm[:, c1] = G[:, c1]
        for c2 in range(c_in):
            idx = pair_index(module, c1, c2)
            if idx is None:
                continue
            Wm = torch.zeros_like(W)
            Wm[idx] = W[idx]
            (lg,) = torch.autograd.grad(fn(a, Wm), a, Gm)
            out[:, c1, c2] = lg[..., c2] if last else lg[:, c2]
    return out


def channel_grad_norms(module: nn.Module, G: Tensor) -> Tensor:
    """``||G[b, c1]||`` over all positions, ``(B, C_out)``."""
    if channels_last_dim(module):
        return G.reshape(G.shape[0], -1, G.shape[-1]).norm(dim=1)
    return G.flatten(2).norm(dim=2)


def literal_stats(lg: Tensor, definition: str = "paper", grad_norms: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Emission, absorption, norm sum from the maps, written out as the definitions read."""
    norms = lg.flatten(3).norm(dim=-1)  # (B, C_out, C_in) = ||LG^{c1->c2}||
    if definition == "paper":
        return norms.sum(2), norms.sum(1), norms.sum(0)  # eq. 19, eq. 20
    assert grad_norms is not None
    frob = lg.flatten(2).norm(dim=-1)  # one norm over every input channel and position of c1's maps
    return frob, grad_norms, norms.sum(0)


def grad_at_output(module: nn.Module, x: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A random upstream gradient ``G`` at the module's output and autograd's ``dL/dA`` for it."""
    a = x.clone().requires_grad_()
    v = module(a)
    G = torch.randn(v.shape, dtype=v.dtype, generator=torch.Generator().manual_seed(seed))
    (da,) = torch.autograd.grad(v, a, G)
    return G, da


@pytest.mark.parametrize(
    "module, shape",
    [
        (nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 9)),
        (nn.Conv2d(3, 4, (2, 3), padding="same", dilation=(1, 2)), (2, 3, 6, 5)),
        (nn.Conv3d(2, 3, 3, stride=(1, 2, 1), padding=(1, 0, 2)), (2, 2, 5, 6, 4)),
        (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), (2, 4, 4, 3)),
        (nn.ConvTranspose1d(2, 3, 4, stride=3, dilation=2, output_padding=1), (2, 2, 5)),
        (nn.Linear(5, 3), (2, 4, 5)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v),
)
def test_literal_twin_sums_to_autograd(module: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    module = module.double()
    x = torch.randn(shape, dtype=torch.float64)
    G, da = grad_at_output(module, x)
    lg = literal_local_gradients(module, x, G)
    total = lg.sum(1)  # (B, C_in, *positions)
    if channels_last_dim(module):
        total = total.movedim(1, -1)
    assert rel_err(total, da) <= 1e-12
