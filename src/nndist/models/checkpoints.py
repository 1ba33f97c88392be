"""Checkpoints: read without ever executing pickled code, written as safetensors with the config.

Checkpoint files are read only by :func:`~nndist.models.weightfiles.open_weights` (PyTorch files
through ``torch.load(..., weights_only=True)``, safetensors through ``safetensors``). A file name that ends in 8 hex digits (``resnet20-12fca82f.th``) is
checked against the first 8 hex digits of the file's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import NndistError
from ..io import atomic_path
from .registry import (
    MODELS,
    TORCHVISION_PREFIX,
    build_model,
    get_model_spec,
    is_path_like,
    is_pretrained_name,
    torchvision_pretrained,
)
from .weightfiles import open_weights

__all__ = ["create_model", "load_model", "load_model_spec", "load_state_dict_checked", "load_weights", "read_state_dict", "save_checkpoint"]

_SHA_SUFFIX = re.compile(r"-([0-9a-fA-F]{8})$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_sha_prefix(path: Path) -> None:
    m = _SHA_SUFFIX.search(path.stem)
    if m is None:
        return
    expected = m.group(1).lower()
    actual = _sha256(path)
    if not actual.startswith(expected):
        raise NndistError(
            f"{path}: SHA-256 is {actual[:8]}..., but the file name says {expected}; the file is "
            "corrupt or was changed: download it again (or rename it if the suffix is not a hash)"
        )


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Reads a checkpoint's state dict without running any pickled code.

    The one reader of checkpoint files is :func:`~nndist.models.weightfiles.open_weights`; this
    checks the file name's SHA-256 prefix, opens the file with it and reads every tensor.

    Args:
        path: anything :func:`~nndist.models.weightfiles.open_weights` reads: ``.safetensors``,
            ``.th``/``.pt``/``.pth``/``.bin`` (PyTorch, ``weights_only=True``; a state dict or one
            nested under ``state_dict``, ``model``, ...), ``.npz``, a Hugging Face folder or index.

    Returns:
        ``(state_dict, metadata)``: keys with a ``module.``/``_orig_mod.`` prefix shared by every
        name stripped; the safetensors metadata (empty for other formats).

    Raises:
        NndistError: Missing file, SHA-256 prefix mismatch, corrupt file or unsafe pickle.
    """
    path = Path(path)
    if not path.exists():
        raise NndistError(f"checkpoint {path} does not exist; pass the path of a .th/.pt/.pth/.safetensors file")
    if path.is_file():
        _check_sha_prefix(path)
    with open_weights(path) as src:
        return {name: src.read(name) for name in src.names()}, dict(src.metadata)


def _fmt_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Loads ``sd`` into ``model`` with strict key and shape checks.

    Only ``num_batches_tracked`` buffers may be absent (old checkpoints lack them).

    Raises:
        NndistError: Listing the missing keys, unexpected keys or mismatched shapes.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    problems = []
    if missing:
        problems.append(f"missing keys: {_fmt_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_fmt_keys(unexpected)}")
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if shapes:
        problems.append(f"shape mismatch: {_fmt_keys(shapes, 6)}")
    if problems:
        name = getattr(model, "nndist_name", type(model).__name__)
        raise NndistError(f"{source} does not fit {name}: {'; '.join(problems)}; check --model and --weights")
    model.load_state_dict(dict(sd), strict=False)


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Loads a checkpoint into ``model`` (in place) and returns it.

    Args:
        model: The model; its keys must match the checkpoint's (after stripping ``module.``),
            except ``num_batches_tracked`` buffers, which old checkpoints lack.
        path: ``.th``/``.pt``/``.pth`` (a raw state dict or a dict with ``state_dict`` or
            ``model``), read with ``torch.load(weights_only=True)`` only; or ``.safetensors``.
            A trailing ``-<8 hex>`` in the file name is checked against the file's SHA-256.

    Raises:
        NndistError: Missing file, hash mismatch, corrupt or unsafe file, missing/unexpected keys.
    """
    sd, _ = read_state_dict(path)
    load_state_dict_checked(model, sd, source=str(path))
    return model


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    config: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
) -> Path:
    """Writes ``model``'s state dict as safetensors, atomically, with the config in the metadata.

    Args:
        path: Target ``.safetensors`` file.
        model: The model; its registry name is ``name``, else ``config["model"]``, else
            ``model.nndist_name`` (set by :func:`create_model`).
        config: The resolved run config, stored as JSON under the ``nndist_config`` metadata key.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    config = dict(config or {})
    model_name = name or config.get("model") or getattr(model, "nndist_name", None)
    if not isinstance(model_name, str):
        raise NndistError("save_checkpoint needs the model's registry name: pass name= or config['model']")
    num_classes = None
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    for v in reversed(list(sd.values())):
        if v.dim() == 2:
            num_classes = v.shape[0]
            break
    metadata = {"nndist_config": json.dumps(config, default=str), "model": model_name}
    if num_classes is not None:
        metadata["num_classes"] = str(num_classes)
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=metadata)
    return path


def _infer_model_name(sd: Mapping[str, torch.Tensor]) -> str | None:
    keys = set(sd)
    if {"conv1.weight", "conv2.weight", "conv3.weight", "fc1.weight", "fc2.weight"} <= keys:
        return "paper_cnn"
    if "linear.weight" in keys and "conv1.weight" in keys:
        blocks = {k.split(".")[1] for k in keys if k.startswith("layer1.")}
        n = len(blocks)
        if n and all(any(k.startswith(f"layer{s}.") for k in keys) for s in (2, 3)):
            return f"cifar_resnet{6 * n + 2}"
    return None


def load_model_spec(spec: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """A model from a registry name (random init) or a checkpoint path.

    Args:
        spec: ``paper_cnn``, ``cifar_resnet20``, ``torchvision:resnet18``, a ``.safetensors``
            written by :func:`save_checkpoint` (the model named in its metadata), or a
            ``.th``/``.pt``/``.pth`` of a paper CNN or CIFAR ResNet (the depth is inferred).

    Returns:
        ``(model, info)``; info has ``name``, ``weights`` (path or None), ``config`` (the
        checkpoint's config or None) and ``spec`` (the :class:`ModelSpec`).

    Raises:
        UnknownNameError: Neither a known name nor an existing file.
        NndistError: A checkpoint whose model cannot be determined or loaded.
    """
    s = str(spec)
    if not isinstance(spec, os.PathLike) and (s in MODELS or s.startswith(TORCHVISION_PREFIX)):
        model = create_model(s)
        return model, {"name": s, "weights": None, "config": None, "spec": get_model_spec(s)}
    path = Path(s)
    if not path.is_file():
        if is_path_like(s):
            raise NndistError(f"checkpoint {path} does not exist; pass a model name or a checkpoint path")
        get_model_spec(s)  # raises the listing of valid names
    sd, metadata = read_state_dict(path)
    config = None
    if "nndist_config" in metadata:
        try:
            config = json.loads(metadata["nndist_config"])
        except json.JSONDecodeError:
            config = None
    name = metadata.get("model") or _infer_model_name(sd)
    if name is None:
        raise NndistError(
            f"{path}: cannot tell which model these weights belong to; pass --model NAME --weights {path}"
        )
    num_classes = None
    head = {"paper_cnn": "fc2.weight"}.get(name, "linear.weight")
    if head in sd:
        num_classes = int(sd[head].shape[0])
    elif "num_classes" in metadata:
        num_classes = int(metadata["num_classes"])
    model = create_model(name, num_classes=num_classes)
    load_state_dict_checked(model, sd, source=str(path))
    return model, {"name": name, "weights": str(path), "config": config, "spec": get_model_spec(name)}


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    weights: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Builds a model by name, randomly initialised or with weights.

    Args:
        name: A registered name (``paper_cnn``, ``cifar_resnet20``, ...) or ``torchvision:<name>``.
        num_classes: Number of outputs; None means the model's default (10, or 1000 for torchvision).
        weights: A checkpoint path (see :func:`load_weights`) or, for torchvision models, the
            name of torchvision weights (``"IMAGENET1K_V1"``, ``"DEFAULT"``).

    Returns:
        The model, in training mode, with ``nndist_name`` set to ``name``.

    Raises:
        UnknownNameError: If ``name`` (or the torchvision weights name) is unknown.
        NndistError: If the weights cannot be read or do not fit the model.
    """
    if is_pretrained_name(name, weights):
        get_model_spec(name)  # an unknown torchvision model is named before any download
        model = torchvision_pretrained(name[len(TORCHVISION_PREFIX) :], str(weights), num_classes)
        model.nndist_name = name  # type: ignore[assignment]
        return model
    model = build_model(name, num_classes)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_model(
    model: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    *,
    num_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The one way the commands get their model: a name (with weights) or a checkpoint file.

    Args:
        model: a registered name, ``torchvision:<name>``, or (without ``weights``) a checkpoint
            path whose model is named in its metadata or inferred from its keys.
        weights: a checkpoint path, or torchvision weights by name (``IMAGENET1K_V1``).
        num_classes: outputs of a registered model built here (the data's classes); torchvision
            models keep their own head.

    Returns:
        ``(model, info)`` as :func:`load_model_spec`.
    """
    name = str(model)
    named = not isinstance(model, os.PathLike) and (name in MODELS or name.startswith(TORCHVISION_PREFIX))
    if weights is None and not named:
        return load_model_spec(model)
    classes = None if name.startswith(TORCHVISION_PREFIX) else num_classes
    built = create_model(name, num_classes=classes, weights=weights)
    info = {"name": name, "weights": None if weights is None else str(weights), "config": None, "spec": get_model_spec(name)}
    return built, info
