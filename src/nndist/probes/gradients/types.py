"""Result types and the two small protocols shared by the gradient handlers and the plumbing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from torch import Tensor, nn

from ...errors import NndistError

Definition = Literal["paper", "author_code"]
DEFINITIONS: tuple[str, ...] = ("paper", "author_code")


def check_definition(definition: str) -> None:
    """Raises :class:`NndistError` for a definition other than ``'paper'`` or ``'author_code'``."""
    if definition not in DEFINITIONS:
        raise NndistError(f"unknown definition {definition!r}; use 'paper' (eqs. 19-20) or 'author_code' (fxnnxc/hex)")


@dataclass(frozen=True)
class LayerGradients:
    """Emission and absorption of one layer for a batch.

    Under ``definition="paper"`` (eqs. 19 and 20):

    Attributes:
        emission: ``(B, C_out)``, ``Em^{c1} = sum_{c2} ||LG^{c1->c2}||`` per sample.
        absorption: ``(B, C_in)``, ``Ab^{c2} = sum_{c1} ||LG^{c1->c2}||`` per sample.
        norm_sum: ``(C_out, C_in)``, ``sum_b ||LG^{c1->c2}||`` over the batch (zero between
            channels of different groups); divide by the number of samples for the mean.

    Under ``definition="author_code"`` (the published code, see :mod:`.author_code`) ``emission`` is
    ``sqrt(sum_{c2} ||LG^{c1->c2}||^2)`` ``(B, C_out)`` and ``absorption`` is ``||G[c1]||``, the norm
    of the gradient arriving at *output* channel ``c1``, also ``(B, C_out)``; ``norm_sum`` keeps
    its meaning above under both definitions.
    """

    emission: Tensor
    absorption: Tensor
    norm_sum: Tensor

    def __add__(self, other: "LayerGradients") -> "LayerGradients":
        return LayerGradients(
            self.emission + other.emission, self.absorption + other.absorption, self.norm_sum + other.norm_sum
        )


Compute = Callable[[Tensor, str], LayerGradients]
"""``compute(G, definition)``: a sub-layer's result from the gradient ``G`` at its output."""


class Track(Protocol):
    """Given by the plumbing to :meth:`CompositeHandler.recompute`.

    ``track(part, output, compute)`` marks ``output`` (the output ``V`` of one linear sub-layer,
    batch first) as the place where ``G = dL/dV`` is taken for the result named ``NAME.part``;
    ``compute(G, definition)`` turns that ``G`` into a :class:`LayerGradients`. It returns the
    tensor the recomputation must go on with (``output`` itself, or a stand-in for it).
    """

    def __call__(self, part: str, output: Tensor, compute: Compute) -> Tensor: ...


class CompositeHandler:
    """A module that holds several channel maps which its forward uses functionally.

    ``nn.MultiheadAttention`` passes its projection weights to ``F.multi_head_attention_forward``,
    so no module hook fires at the projections. A composite handler recomputes the module's output
    from the hooked inputs with each sub-layer explicit, calls ``track`` on each sub-layer's output,
    and returns the recomputed output, which replaces the module's own (same values).

    Attributes:
        definitions: The definitions its ``compute`` functions accept.
    """

    definitions: tuple[str, ...] = DEFINITIONS

    def parts(self, module: nn.Module) -> tuple[str, ...]:
        """Names of the sub-layers; results are keyed ``NAME.part``. A child module of that name is
        covered by this handler and not measured on its own."""
        raise NotImplementedError

    def covered_parameters(self, module: nn.Module) -> tuple[str, ...]:
        """The module's own parameters (not its children's) that the sub-layers use as weights."""
        return ()

    def recompute(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, track: Track
    ) -> Any:
        """The module's output, recomputed from ``args``/``kwargs`` with each sub-layer tracked."""
        raise NotImplementedError
