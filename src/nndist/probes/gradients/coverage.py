r"""What has no channel-to-channel local gradient, and why (``GradientResults.no_local_gradient``).

A local gradient ``LG^{c1->c2}`` exists where a layer maps input channels to output channels
linearly. These hold parameters but do not:

- Normalisation layers (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, LocalResponseNorm,
  RMSNorm): their affine part scales and shifts each channel by itself (a diagonal map).
- ``nn.Embedding`` and ``nn.EmbeddingBag``: the input is token ids, not channels. Viewing the ids
  as one-hot vectors would make every vocabulary entry an input channel and give a "local
  gradient" to tokens that were never looked up, so no Emission or Absorption is reported for
  them; the gradient they receive is the ``G`` of the next layer.
- Parameters held directly by a container (a module that has child modules and no handler), such
  as ViT's class token and position embedding, ConvNeXt's layer scale or Swin's relative position
  bias table: they are prepended to, added to, or multiply activations channel by channel, not
  a channel map of a layer. They are listed under their own parameter names. A container that
  does use a parameter of its own as a channel map needs a handler (``register_handler``).
- Parameters of a handled attention module that are not its projections (``bias_k``/``bias_v``
  of ``nn.MultiheadAttention``: key and value tokens appended to the sequence).

:data:`KNOWN_PARAMETERS` gives the reason for the known cases; others get a generic one.
"""

from __future__ import annotations

from torch import nn

NORM_TYPES: tuple[type, ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._BatchNorm,
        nn.modules.instancenorm._InstanceNorm,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)

INDEX_TYPES: tuple[type, ...] = (nn.Embedding, nn.EmbeddingBag)

KNOWN_PARAMETERS: dict[tuple[str, str], str] = {
    ("torchvision.models.vision_transformer.VisionTransformer", "class_token"): (
        "class token: a learned token prepended to the sequence (no input channel)"
    ),
    ("torchvision.models.vision_transformer.Encoder", "pos_embedding"): (
        "position embedding: added to the tokens (identity map per channel)"
    ),
    ("torchvision.models.convnext.CNBlock", "layer_scale"): "layer scale: multiplies each channel by itself",
    ("torchvision.models.swin_transformer.ShiftedWindowAttention", "relative_position_bias_table"): (
        "relative position bias: added to the attention logits (no channel map)"
    ),
    ("torch.nn.modules.activation.MultiheadAttention", "bias_k"): "key token appended to the sequence",
    ("torch.nn.modules.activation.MultiheadAttention", "bias_v"): "value token appended to the sequence",
}


def qualified_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def module_reason(module_type: type) -> str | None:
    """Why a module of this type has no local gradient, or None if it may have one."""
    if issubclass(module_type, NORM_TYPES):
        return f"{module_type.__name__}: per-channel affine (a diagonal map)"
    if module_type in INDEX_TYPES:
        return f"{module_type.__name__}: index lookup, the input is token ids and not channels"
    return None


def parameter_reason(module_type: type, parameter: str) -> str:
    """Why a parameter held directly by a container (or an attention module) has no local gradient."""
    known = KNOWN_PARAMETERS.get((qualified_name(module_type), parameter))
    if known is not None:
        return known
    return f"held directly by {module_type.__name__}, not by a layer (no channel map of a layer)"
