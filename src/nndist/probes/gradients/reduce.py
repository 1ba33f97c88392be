r"""From the squared norms ``||LG^{c1->c2}||^2`` of every channel pair to each definition's statistics.

The convolution kernels produce ``q[c1, b, j] = ||LG^{c1->c2}||^2`` for output channel ``c1``,
sample ``b`` and the ``j``-th input channel ``c2`` of ``c1``'s group (``(C_out, B, C_in/groups)``,
block-diagonal in the full ``C_out x C_in`` matrix). Both definitions are reductions of ``q``:

- ``paper`` (eqs. 19, 20): ``Em^{c1} = sum_{c2} sqrt(q)``, ``Ab^{c2} = sum_{c1} sqrt(q)``: the row and
  column sums of one matrix, so ``sum_{c1} Em = sum_{c2} Ab`` for every sample.
- ``author_code``: ``Em^{c1} = sqrt(sum_{c2} q)``, the Frobenius norm of all of ``c1``'s local
  gradients at once (what ``emitted_grads.norm()`` computes in the code), and
  ``Ab^{c1} = ||G[c1]||``, the norm of the gradient arriving at output channel ``c1``. For a
  convolution ``sum_{c2} q = tr(Gamma_{c1} W_{c1}^T W_{c1})``: the trace of the same Gram matrix, so
  one kernel serves both.

``norm_sum`` is ``sum_b sqrt(q)`` under both definitions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .types import LayerGradients


def block_diagonal(blocks: Tensor) -> Tensor:
    """``(groups, C_out/g, C_in/g)`` blocks as the ``(C_out, C_in)`` matrix that is zero between groups."""
    groups, cout_g, cin_g = blocks.shape
    full = blocks.new_zeros(groups, cout_g, groups, cin_g)
    idx = torch.arange(groups, device=blocks.device)
    full[idx, :, idx, :] = blocks
    return full.reshape(groups * cout_g, groups * cin_g)


def grouped_result(norms: Tensor, groups: int) -> LayerGradients:
    """Paper emission, absorption and the batch sum from ``(C_out, B, C_in/groups)`` block-diagonal norms."""
    C_out, B, cin_g = norms.shape
    emission = norms.sum(2).T  # (B, C_out)
    absorption = norms.reshape(groups, C_out // groups, B, cin_g).sum(1).permute(1, 0, 2).reshape(B, -1)
    norm_sum = block_diagonal(norms.sum(1).reshape(groups, C_out // groups, cin_g))
    return LayerGradients(emission, absorption.contiguous(), norm_sum)


def channel_norms(grad_output: Tensor) -> Tensor:
    """``||G[b, c]||`` over every position, ``(B, C)``, for ``G`` of shape ``(B, C, *spatial)``."""
    return grad_output.reshape(grad_output.shape[0], grad_output.shape[1], -1).pow(2).sum(2).sqrt()


def compiled_serves(t: Tensor) -> bool:
    """Whether the compiled CPU passes (:mod:`.compiled`) serve ``t``: float32/float64, on the CPU, contiguous."""
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) or not t.is_contiguous():
        return False
    from .compiled import AVAILABLE

    return AVAILABLE


def pair_result(sq_norms: Tensor, groups: int, definition: str, grad_output: Tensor) -> LayerGradients:
    """Either definition's statistics from ``q = ||LG||^2``, ``(C_out, B, C_in/groups)``.

    Args:
        sq_norms: ``q``, clamped at zero; it is overwritten (square root taken in place).
        groups: The layer's groups.
        definition: ``"paper"`` or ``"author_code"``.
        grad_output: ``G`` ``(B, C_out, *spatial)``, for the code's absorption ``||G[c1]||``.
    """
    code_emission = sq_norms.sum(2).sqrt().T.contiguous() if definition == "author_code" else None  # (B, C_out)
    if compiled_serves(sq_norms):  # one pass: square roots and the three sums
        from .compiled import paper_statistics

        emission, absorption, norm_sum = paper_statistics(sq_norms, groups)
    else:
        res = grouped_result(sq_norms.sqrt_(), groups)
        emission, absorption, norm_sum = res.emission, res.absorption, res.norm_sum
    if code_emission is None:
        return LayerGradients(emission, absorption, norm_sum)
    return LayerGradients(code_emission, channel_norms(grad_output).to(sq_norms.dtype), norm_sum)
