"""Result types shared by the gradient handlers and the plumbing."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class LayerGradients:
    """Emission and absorption of one layer for a batch.

    Attributes:
        emission: ``(B, C_out)``, ``Em^{c1} = sum_{c2} ||LG^{c1->c2}||`` per sample.
        absorption: ``(B, C_in)``, ``Ab^{c2} = sum_{c1} ||LG^{c1->c2}||`` per sample.
        norm_sum: ``(C_out, C_in)``, ``sum_b ||LG^{c1->c2}||`` over the batch (zero between
            channels of different groups); divide by the number of samples for the mean.
    """

    emission: Tensor
    absorption: Tensor
    norm_sum: Tensor

    def __add__(self, other: "LayerGradients") -> "LayerGradients":
        return LayerGradients(
            self.emission + other.emission, self.absorption + other.absorption, self.norm_sum + other.norm_sum
        )
