r"""Emission and absorption of the linear maps inside attention modules.

``nn.MultiheadAttention`` applies four linear maps on tokens: the q, k and v in-projections
(``in_proj_weight`` split in three rows blocks, or ``q/k/v_proj_weight``) and ``out_proj``, all
through ``F.multi_head_attention_forward``, so no module hook fires at any of them. Each is a linear
layer on tokens (:mod:`.linear`): with ``g = dL/dv`` at the projection's output ``(B, L, E)``,
``||LG^{i->j}|| = |W_ij| ||g_i||`` with the norm over the ``L`` tokens.

Getting ``G`` at the projections: a forward hook on the attention module recomputes its output
from the hooked inputs with the four projections written as ``F.linear`` calls (batch first),
places the tracking hooks on their outputs, and returns this output in place of the module's
(the same values up to rounding: the attention below is ``F.multi_head_attention_forward``'s own
arithmetic; in float64 they agree to 1e-12).
The backward pass then runs through the explicit graph and delivers ``dL/dq``, ``dL/dk``, ``dL/dv``
and ``dL/d out_proj``, exactly as for a model written with four ``nn.Linear`` layers. The cost is
one extra forward of the attention block. Supported: ``batch_first`` either way, packed or
separate (``kdim``/``vdim``) weights, with or without bias, ``add_bias_kv`` (the appended key/value
tokens are parameters without an input channel, listed under ``no_local_gradient``),
``add_zero_attn``, ``key_padding_mask`` and ``attn_mask`` (bool or float, 2-D or 3-D; the
``is_causal`` hint is a promise about ``attn_mask``, which is used as given), ``need_weights`` and
``average_attn_weights`` either way, dropout in train mode (a fresh mask). Results are keyed
``NAME.q_proj``, ``NAME.k_proj``, ``NAME.v_proj``, ``NAME.out_proj``.

torchvision's Swin ``ShiftedWindowAttention`` passes ``self.qkv.weight`` and ``self.proj.weight`` to
``F.linear`` inside ``shifted_window_attention``. :class:`FunctionalLinearsHandler` reruns the module's
own ``forward`` under a ``TorchFunctionMode`` that tracks the outputs of the ``F.linear`` calls whose
weight *is* one of the named children's, so the computation is torchvision's own. The tokens of
one sample are contiguous there (``(B * windows, tokens, C)``, sample outermost), which the linear
kernel is told (``batch=B``); padded tokens, if the feature map is not a multiple of the window,
count as tokens of the ``F.linear`` call's input.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ...errors import NndistError
from .linear import linear_local_gradient_norms
from .types import CompositeHandler, LayerGradients, Track


def _linear_compute(weight: Tensor, batch: int | None = None):  # type: ignore[no-untyped-def]
    w = weight.detach()

    def compute(grad: Tensor, definition: str) -> LayerGradients:
        g = grad.detach()
        if g.dtype not in (torch.float32, torch.float64):
            g = g.float()
        return linear_local_gradient_norms(w, g, definition, batch=batch)

    return compute


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A bool mask (True = masked) as ``-inf``/0, a float mask as it is (``F._canonical_mask``)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


class MultiheadAttentionHandler(CompositeHandler):
    """``nn.MultiheadAttention`` as four linear layers on tokens (see the module docstring)."""

    def parts(self, module: nn.Module) -> tuple[str, ...]:
        return ("q_proj", "k_proj", "v_proj", "out_proj")

    def covered_parameters(self, module: nn.Module) -> tuple[str, ...]:
        return ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight")

    def recompute(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, track: Track
    ) -> Any:
        assert isinstance(module, nn.MultiheadAttention)
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        query, key, value = a["query"], a["key"], a["value"]
        if query.dim() != 3:
            raise NndistError(f"MultiheadAttention got an unbatched query of shape {tuple(query.shape)}; pass a batch")
        bf = (lambda t: t) if module.batch_first else (lambda t: t.transpose(0, 1))
        q_in, k_in, v_in = bf(query), bf(key), bf(value)  # (B, L, E), (B, S, kdim), (B, S, vdim)
        B, L, E = q_in.shape
        S = k_in.shape[1]
        H, hd = module.num_heads, module.head_dim
        if module._qkv_same_embed_dim:
            w_q, w_k, w_v = module.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
        b_q, b_k, b_v = (None, None, None) if module.in_proj_bias is None else module.in_proj_bias.chunk(3)
        q = track("q_proj", F.linear(q_in, w_q, b_q), _linear_compute(w_q))
        k = track("k_proj", F.linear(k_in, w_k, b_k), _linear_compute(w_k))
        v = track("v_proj", F.linear(v_in, w_v, b_v), _linear_compute(w_v))

        dtype = q.dtype
        attn_mask = _additive(a["attn_mask"], dtype)
        kpm = _additive(a["key_padding_mask"], dtype)
        if attn_mask is not None:  # (1 or B, 1 or H, L, S)
            attn_mask = attn_mask.reshape(1, 1, L, S) if attn_mask.dim() == 2 else attn_mask.reshape(B, H, L, S)
        if kpm is not None:
            kpm = kpm.reshape(B, 1, 1, S)

        def one_more_key(m: Tensor | None) -> Tensor | None:
            return None if m is None else F.pad(m, (0, 1))

        if module.bias_k is not None and module.bias_v is not None:
            k = torch.cat([k, module.bias_k.reshape(1, 1, E).expand(B, 1, E)], 1)
            v = torch.cat([v, module.bias_v.reshape(1, 1, E).expand(B, 1, E)], 1)
            attn_mask, kpm = one_more_key(attn_mask), one_more_key(kpm)
        qh = q.reshape(B, L, H, hd).transpose(1, 2)  # (B, H, L, hd)
        kh = k.reshape(B, k.shape[1], H, hd).transpose(1, 2)
        vh = v.reshape(B, v.shape[1], H, hd).transpose(1, 2)
        if module.add_zero_attn:
            zeros = qh.new_zeros(B, H, 1, hd)
            kh, vh = torch.cat([kh, zeros], 2), torch.cat([vh, zeros], 2)
            attn_mask, kpm = one_more_key(attn_mask), one_more_key(kpm)
        scores = torch.matmul(qh * (1.0 / hd) ** 0.5, kh.transpose(-2, -1))  # (B, H, L, S')
        for m in (attn_mask, kpm):
            if m is not None:
                scores = scores + m
        weights = torch.softmax(scores, dim=-1)
        if module.training and module.dropout > 0:
            weights = F.dropout(weights, p=module.dropout)
        o = torch.matmul(weights, vh).transpose(1, 2).reshape(B, L, E)
        out_w, out_b = module.out_proj.weight, module.out_proj.bias
        out = track("out_proj", F.linear(o, out_w, out_b), _linear_compute(out_w))
        out = out if module.batch_first else out.transpose(0, 1)
        if not a["need_weights"]:
            return out, None
        return out, (weights.mean(1) if a["average_attn_weights"] else weights)


class _LinearTap(TorchFunctionMode):
    """Tracks the outputs of ``F.linear`` calls whose weight is one of ``weights`` (by identity)."""

    def __init__(self, weights: dict[int, str], batch: int, track: Track) -> None:
        super().__init__()
        self.weights, self.batch, self.track = weights, batch, track
        self.seen: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            part = self.weights.get(id(weight))
            if part is not None:
                self.seen.add(part)
                out = self.track(part, out, _linear_compute(weight, self.batch))
        return out


class FunctionalLinearsHandler(CompositeHandler):
    """A module whose ``forward`` passes the weights of its ``children`` (``nn.Linear``) to ``F.linear``.

    Its forward must call no other module (they would be counted twice). See the module docstring.
    """

    def __init__(self, children: tuple[str, ...]) -> None:
        self.children = children

    def parts(self, module: nn.Module) -> tuple[str, ...]:
        return self.children

    def recompute(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, track: Track
    ) -> Any:
        x = args[0] if args else next(iter(kwargs.values()))
        weights = {id(getattr(module, c).weight): c for c in self.children}
        tap = _LinearTap(weights, x.shape[0], track)
        with tap:
            out = type(module).forward(module, *args, **kwargs)
        missing = [c for c in self.children if c not in tap.seen]
        if missing:
            raise NndistError(
                f"{type(module).__name__}.forward did not call F.linear with the weights of {missing}; "
                "its handler no longer matches this version: leave the layer out with layers=[...]"
            )
        return out
