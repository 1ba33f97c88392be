"""Models by name: one registry, one way to build a model (timm's ``create_model`` pattern).

Every model the CLI can name lives in :data:`MODELS` as a :class:`ModelSpec` (a factory plus
the input size and the normalisation it expects)::

    model = create_model("paper_cnn")                       # Table 1 of the paper, random init
    model = create_model("cifar_resnet20", weights="resnet20-12fca82f.th")
    model = create_model("torchvision:resnet18", weights="IMAGENET1K_V1")

Registered here: ``paper_cnn`` (:mod:`.paper_cnn`), ``cifar_resnet{20,32,44,56,110}``
(:mod:`.cifar_resnet`); ``torchvision:<name>`` resolves any torchvision classifier on demand;
:func:`register_model` adds a user's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import NndistError, UnknownNameError
from ..paper import IMAGENET_MEAN, IMAGENET_STD
from ..registry import Registry

__all__ = [
    "CHECKPOINT_SUFFIXES", "MODELS", "TORCHVISION_PREFIX", "ModelSpec", "build_model", "get_model_spec", "is_path_like",
    "is_pretrained_name", "list_models", "register_model", "torchvision_pretrained",
]

TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model.

    Attributes:
        factory: ``factory(num_classes) -> nn.Module`` building a randomly initialised model.
        input_size: ``(C, H, W)`` the model needs, or None if it takes any spatial size.
        mean: Per-channel mean used to normalise [0, 1] pixels.
        std: Per-channel std used to normalise [0, 1] pixels.
        num_classes: Default number of outputs.
        description: One line for ``--help`` and listings.
        resize: How image folders are resized for it (:data:`nndist.data.RESIZE_MODES`):
            ``cifar`` keeps the images' size, ``imagenet`` resizes to 256 and centre-crops 224.
    """

    factory: Callable[[int], nn.Module]
    input_size: tuple[int, int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int = 10
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    resize: str = "cifar"


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(
    name: str,
    factory: Callable[[int], nn.Module],
    *,
    input_size: tuple[int, int, int] | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    num_classes: int = 10,
    description: str = "",
    overwrite: bool = False,
) -> ModelSpec:
    """Registers a model so that every command and config can name it.

    Args:
        name: the registry name (``--model NAME``).
        factory: ``factory(num_classes) -> nn.Module``, a freshly initialised model.
        input_size: ``(C, H, W)`` the model needs, or None if it takes any spatial size.
        mean, std: per-channel normalisation of [0, 1] pixels the model expects.
        num_classes: default number of outputs.
        description: one line for listings.
        overwrite: replace an existing entry of that name.

    Returns:
        The registered :class:`ModelSpec`.

    Raises:
        NndistError: the name is taken (and ``overwrite`` is false) or uses the torchvision prefix.
    """
    if name.startswith(TORCHVISION_PREFIX) or not name:
        raise NndistError(f"model name {name!r} is reserved; choose a name without the {TORCHVISION_PREFIX!r} prefix")
    if name in MODELS and not overwrite:
        raise NndistError(f"model {name!r} is already registered; pass overwrite=True to replace it")
    spec = ModelSpec(factory=factory, input_size=input_size, mean=tuple(mean), std=tuple(std),  # type: ignore[arg-type]
                     num_classes=num_classes, description=description)
    MODELS.add(name, spec, overwrite=True)
    return spec


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered model names matching ``pattern`` (torchvision models are not listed)."""
    return MODELS.names(pattern)


def _torchvision_name(name: str) -> str:
    import torchvision

    tv_name = name[len(TORCHVISION_PREFIX) :]
    valid = torchvision.models.list_models(module=torchvision.models)
    if tv_name not in valid:
        raise UnknownNameError(
            f"unknown torchvision model {tv_name!r}; valid names: {', '.join(sorted(valid))}"
        )
    return tv_name


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered name or of ``torchvision:<name>``.

    Raises:
        UnknownNameError: If the name is unknown; the message lists the valid names.
    """
    if name.startswith(TORCHVISION_PREFIX):
        tv_name = _torchvision_name(name)

        def factory(num_classes: int) -> nn.Module:
            import torchvision

            return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)

        return ModelSpec(
            factory=factory,
            input_size=None,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            num_classes=1000,
            description=f"torchvision model {tv_name}",
            resize="imagenet",
        )
    try:
        return MODELS.get(name)
    except UnknownNameError:
        valid = ", ".join(MODELS.names())
        raise UnknownNameError(
            f"unknown model {name!r}; valid names: {valid}, or torchvision:<name> (e.g. torchvision:resnet18)"
        ) from None


#: File suffixes read as checkpoints.
CHECKPOINT_SUFFIXES = (".th", ".pt", ".pth", ".safetensors")


def is_path_like(weights: str | os.PathLike[str]) -> bool:
    """Whether ``weights`` names a file (a path, a checkpoint suffix) rather than a weights name."""
    s = str(weights)
    return isinstance(weights, os.PathLike) or s.endswith(CHECKPOINT_SUFFIXES) or os.sep in s or Path(s).exists()


def is_pretrained_name(name: str, weights: Any) -> bool:
    """torchvision weights given by name (``IMAGENET1K_V1``, ``DEFAULT``), not by file."""
    return name.startswith(TORCHVISION_PREFIX) and weights is not None and not is_path_like(weights)


def torchvision_pretrained(tv_name: str, weights: str, num_classes: int | None) -> nn.Module:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(tv_name)
        w = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError):
        try:
            valid = ", ".join(m.name for m in torchvision.models.get_model_weights(tv_name))
        except Exception:  # pragma: no cover - a torchvision model without weights
            valid = "none"
        raise UnknownNameError(
            f"unknown weights {weights!r} for torchvision:{tv_name}; valid names: {valid}, or a checkpoint path"
        ) from None
    n_cls = len(w.meta.get("categories", [])) or 1000
    if num_classes is not None and num_classes != n_cls:
        raise NndistError(
            f"torchvision weights {weights} have {n_cls} classes, not {num_classes}; drop --num-classes"
        )
    try:
        return torchvision.models.get_model(tv_name, weights=w)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
        raise NndistError(
            f"cannot get torchvision weights {weights} for {tv_name} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); offline, put {os.path.basename(w.url)} at "
            f"{cache} or pass --weights PATH to a local checkpoint"
        ) from exc


def build_model(name: str, num_classes: int | None = None) -> nn.Module:
    """A freshly initialised model by name (``nndist_name`` set); None classes: the model's default."""
    spec = get_model_spec(name)
    model = spec.factory(spec.num_classes if num_classes is None else num_classes)
    model.nndist_name = name  # type: ignore[assignment]
    return model
