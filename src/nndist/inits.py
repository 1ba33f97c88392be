r"""Weight initialisation schemes of the paper (section 2.1), by name.

Each scheme draws the weight :math:`W` of every convolution (1d/2d/3d) and linear layer, built
on :mod:`torch.nn.init`. For a weight of shape ``(d_out, d_in, *kernel)`` the fans are
:math:`d_{in} = C_{in} \prod k` and :math:`d_{out} = C_{out} \prod k` (PyTorch's convention).
:math:`g` is the gain; ``gain=`` overrides the default.

``xavier_normal`` (eq. 1-2)
    :math:`W \sim \mathcal N(0, \sigma^2)`, :math:`\sigma = g\sqrt{2/(d_{in}+d_{out})}`, default :math:`g=1`.
``xavier_uniform`` (eq. 3-4)
    :math:`W \sim \mathcal U(-a, a)`, :math:`a = g\sqrt{6/(d_{in}+d_{out})}`, default :math:`g=1`.
``kaiming_normal`` (eq. 5-6)
    :math:`W \sim \mathcal N(0, \sigma^2)`, :math:`\sigma = g/\sqrt{d_{in}}` with the ReLU gain
    :math:`g=\sqrt 2`, i.e. :math:`\sigma = \sqrt{2/d_{in}}` (``torch.nn.init.kaiming_normal_``,
    fan_in mode). The paper writes :math:`\sigma = g\sqrt{2/d_{in}}`, which with :math:`g=\sqrt2`
    would count the ReLU factor 2 twice (:math:`\sigma = 2/\sqrt{d_{in}}`); we follow He et al.
    and ``torch.nn.init``.
``kaiming_uniform`` (eq. 7-8)
    :math:`W \sim \mathcal U(-a, a)`, :math:`a = g\sqrt{3/d_{in}}` with :math:`g=\sqrt 2`, i.e.
    :math:`a = \sqrt{6/d_{in}}` (``torch.nn.init.kaiming_uniform_``, fan_in mode; the paper's
    :math:`a = g\sqrt{6/d_{in}}` double-counts the ReLU factor in the same way). Same variance
    as ``kaiming_normal``.
``orthogonal``
    :math:`W` reshaped to ``(d_out, d_in_total)`` is :math:`g` times a (semi-)orthogonal matrix
    (orthonormal rows if :math:`d_{out} \le` the other dim, else orthonormal columns), drawn
    uniformly (QR of a Gaussian matrix; Saxe et al. 2014), default :math:`g=1`. Each entry then has
    variance :math:`g^2/\max(d_{out}, d_{in\_total})`.
``ones`` / ``zeros``
    Every weight and bias set to 1 / 0 (the paper's degenerate baselines).
``default``
    PyTorch's own ``reset_parameters``: :math:`W \sim \mathcal U(-a, a)`, :math:`a = 1/\sqrt{d_{in}}`
    (``kaiming_uniform_`` with :math:`a=\sqrt5`).

Biases keep PyTorch's default distribution :math:`\mathcal U(-1/\sqrt{d_{in}}, 1/\sqrt{d_{in}})`
(redrawn from the same generator, so a seed fixes the whole model), except under ``ones`` and
``zeros``, which set them to 1 and 0; ``bias_init`` overrides either.

Example::

    init_model(model, "kaiming_normal", seed=0)
    init_model(model, "xavier_uniform", gain=nn.init.calculate_gain("tanh"), bias_init="zeros")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import NndistError
from .paper import PAPER_INITS
from .registry import Registry

__all__ = [
    "INITS",
    "InitScheme",
    "INIT_LAYER_TYPES",
    "PAPER_INITS",
    "init_model",
    "list_inits",
    "fans",
]

#: Layer types whose weights a scheme sets; extend it to cover more (e.g. ConvTranspose2d).
INIT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

RELU_GAIN = math.sqrt(2.0)


@dataclass(frozen=True)
class InitScheme:
    """An initialisation scheme.

    Attributes:
        init: ``init(weight, gain, generator)`` filling ``weight`` in place.
        default_gain: Gain used when ``init_model`` gets ``gain=None``.
        bias: What biases get by default: ``"default"`` (PyTorch's), ``"zeros"`` or ``"ones"``.
        formula: One-line formula, for listings and reports.
    """

    init: Callable[[torch.Tensor, float, torch.Generator | None], None]
    default_gain: float
    bias: str = "default"
    formula: str = ""


INITS: Registry[InitScheme] = Registry("init scheme")


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """``(d_in, d_out)`` of a weight ``(C_out, C_in, *kernel)`` as torch.nn.init counts them."""
    if weight.dim() < 2:
        raise NndistError(f"cannot compute fans of a {weight.dim()}-d weight; init schemes need >= 2-d weights")
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _kaiming_normal(w: torch.Tensor, gain: float, gen: torch.Generator | None) -> None:
    # nonlinearity="linear" gives gain 1, std = 1/sqrt(d_in); scale by the requested gain.
    nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="linear", generator=gen)
    w.mul_(gain)


def _kaiming_uniform(w: torch.Tensor, gain: float, gen: torch.Generator | None) -> None:
    nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="linear", generator=gen)
    w.mul_(gain)


def _default(w: torch.Tensor, gain: float, gen: torch.Generator | None) -> None:
    # What nn.Linear/nn.ConvNd.reset_parameters do; gain scales the bound.
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
    w.mul_(gain)


INITS.add("orthogonal", InitScheme(
    lambda w, g, gen: nn.init.orthogonal_(w, gain=g, generator=gen), 1.0,
    formula="W = g * Q, Q (semi-)orthogonal (QR of a Gaussian), g = 1",
))
INITS.add("kaiming_normal", InitScheme(
    _kaiming_normal, RELU_GAIN, formula="N(0, s^2), s = g / sqrt(d_in), g = sqrt(2) (ReLU)",
))
INITS.add("kaiming_uniform", InitScheme(
    _kaiming_uniform, RELU_GAIN, formula="U(-a, a), a = g * sqrt(3 / d_in), g = sqrt(2) (ReLU)",
))
INITS.add("xavier_normal", InitScheme(
    lambda w, g, gen: nn.init.xavier_normal_(w, gain=g, generator=gen), 1.0,
    formula="N(0, s^2), s = g * sqrt(2 / (d_in + d_out)), g = 1",
))
INITS.add("xavier_uniform", InitScheme(
    lambda w, g, gen: nn.init.xavier_uniform_(w, gain=g, generator=gen), 1.0,
    formula="U(-a, a), a = g * sqrt(6 / (d_in + d_out)), g = 1",
))
INITS.add("ones", InitScheme(lambda w, g, gen: nn.init.constant_(w, g), 1.0, bias="ones", formula="W = 1, b = 1"))
INITS.add("zeros", InitScheme(lambda w, g, gen: nn.init.zeros_(w), 1.0, bias="zeros", formula="W = 0, b = 0"))
INITS.add("default", InitScheme(
    _default, 1.0, formula="PyTorch reset_parameters: U(-a, a), a = 1 / sqrt(d_in)",
))


def list_inits(pattern: str = "*") -> list[str]:
    """Sorted names of the registered schemes matching ``pattern``."""
    return INITS.names(pattern)


def _default_bias(b: torch.Tensor, weight: torch.Tensor, gen: torch.Generator | None) -> None:
    d_in, _ = fans(weight)
    bound = 1.0 / math.sqrt(d_in) if d_in > 0 else 0.0
    nn.init.uniform_(b, -bound, bound, generator=gen)


def init_model(
    model: nn.Module,
    scheme: str,
    *,
    gain: float | None = None,
    bias_init: str | float | None = None,
    generator: torch.Generator | int | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Initialises the weights of every conv and linear layer of ``model`` in place.

    Args:
        model: The model; layers of the types in :data:`INIT_LAYER_TYPES` are set, others
            (e.g. BatchNorm) are left alone.
        scheme: A name in :data:`INITS` (``orthogonal``, ``kaiming_normal``, ...).
        gain: Overrides the scheme's gain (ReLU gain sqrt(2) for Kaiming, 1 otherwise).
        bias_init: ``"default"`` (PyTorch's U(-1/sqrt(d_in), 1/sqrt(d_in))), ``"zeros"``,
            ``"ones"`` or a float; None means the scheme's choice.
        generator: A ``torch.Generator`` or an int seed; draws are deterministic given it.
        seed: Same as passing an int ``generator``.

    Returns:
        ``model``.

    Raises:
        UnknownNameError: Unknown scheme (the message lists the valid ones).
        NndistError: Invalid ``bias_init``.
    """
    entry = INITS.get(scheme)
    if seed is not None and generator is not None:
        raise NndistError("pass either generator= or seed= to init_model, not both")
    gen: torch.Generator | None
    if isinstance(generator, torch.Generator):
        gen = generator
    elif generator is not None or seed is not None:
        gen = torch.Generator().manual_seed(int(generator if generator is not None else seed))  # type: ignore[arg-type]
    else:
        gen = None
    g = entry.default_gain if gain is None else float(gain)
    bias_mode: str | float = entry.bias if bias_init is None else bias_init
    if isinstance(bias_mode, str) and bias_mode not in ("default", "zeros", "ones"):
        try:
            bias_mode = float(bias_mode)
        except ValueError:
            raise NndistError(
                f"unknown bias_init {bias_init!r}; use default, zeros, ones or a number"
            ) from None
    with torch.no_grad():
        for _, module in model.named_modules():
            if not isinstance(module, INIT_LAYER_TYPES):
                continue
            weight = module.weight
            # Draw on CPU with the CPU generator so results do not depend on the device.
            w = torch.empty(weight.shape, dtype=weight.dtype)
            entry.init(w, g, gen)
            weight.copy_(w)
            bias = getattr(module, "bias", None)
            if bias is None:
                continue
            if bias_mode == "default":
                b = torch.empty(bias.shape, dtype=bias.dtype)
                _default_bias(b, weight, gen)
                bias.copy_(b)
            elif bias_mode == "zeros":
                bias.zero_()
            elif bias_mode == "ones":
                bias.fill_(1.0)
            else:
                bias.fill_(float(bias_mode))
    return model
