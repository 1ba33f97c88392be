"""Models by name, checkpoints and evaluation.

Every model the CLI can name lives in the :data:`MODELS` registry as a :class:`ModelSpec` (a
factory plus the input size and the normalisation it expects), and :func:`create_model` is the
one way to build one (timm's ``create_model`` pattern)::

    model = create_model("paper_cnn")                       # Table 1 of the paper, random init
    model = create_model("cifar_resnet20", weights="resnet20-12fca82f.th")
    model = create_model("torchvision:resnet18", weights="IMAGENET1K_V1")

Registered models:

* ``paper_cnn`` -- the three-convolution CNN of the paper's Table 1 (3x32x32 inputs).
* ``cifar_resnet{20,32,44,56,110}`` -- the CIFAR ResNets of He et al. 2016 (section 4.2) with the
  parameter-free "option A" shortcut, named so that the public checkpoints load with strict keys.
* ``torchvision:<name>`` -- any torchvision classification model, resolved on demand.

Checkpoints are read without ever executing pickled code: PyTorch files only through
``torch.load(..., weights_only=True)`` and safetensors files through ``safetensors``.
A file name that ends in 8 hex digits (``resnet20-12fca82f.th``) is checked against the first
8 hex digits of the file's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .data import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from .errors import NndistError, UnknownNameError
from .io import atomic_path
from .registry import Registry

__all__ = [
    "MODELS",
    "ModelSpec",
    "PAPER_LAYERS",
    "PaperCNN",
    "CifarResNet",
    "BasicBlock",
    "ShortcutA",
    "create_model",
    "list_models",
    "get_model_spec",
    "load_weights",
    "read_state_dict",
    "save_checkpoint",
    "load_model_spec",
    "evaluate",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]


#: The layers whose distributions the paper analyses (starred in Table 1).
PAPER_LAYERS = ("conv1", "conv2", "conv3", "fc1")

TORCHVISION_PREFIX = "torchvision:"
CHECKPOINT_SUFFIXES = (".th", ".pt", ".pth", ".safetensors")
_SHA_SUFFIX = re.compile(r"-([0-9a-fA-F]{8})$")


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
    """

    factory: Callable[[int], nn.Module]
    input_size: tuple[int, int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int = 10
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


MODELS: Registry[ModelSpec] = Registry("model")


# --------------------------------------------------------------------------------------------
# The paper's CNN (Table 1)
# --------------------------------------------------------------------------------------------


class PaperCNN(nn.Module):
    """The CNN of the paper's Table 1.

    conv1 (3,16,3,1,1) - ReLU - MaxPool 2 - conv2 (16,16,3,1,1) - ReLU - MaxPool 2 -
    conv3 (16,16,3,1,1) - ReLU - Flatten (16*8*8 = 1024) - fc1 (1024, 512) - ReLU - fc2 (512, 10).
    535,018 parameters with 10 classes. Activations and pools are modules (``relu1``, ``pool1``,
    ...) so that they can be hooked like any layer.
    """

    input_size = (3, 32, 32)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 16, 3, 1, 1)
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 8 * 8, 512)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Checked on the trailing dims so that torch.func.vmap (which hides the batch dim) works.
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.input_size:
            got = "x".join(map(str, x.shape[-3:])) if x.dim() >= 3 else str(tuple(x.shape))
            raise NndistError(
                f"the paper CNN needs 3x32x32 inputs (channels x height x width), got {got} "
                f"(batch shape {tuple(x.shape)}); use 32x32 RGB images: resize the image folder, "
                "or pass --image-size 32 where the command has it (nndist evaluate)"
            )
        x = self.pool1(self.relu1(self.conv1(x)))  # (B, 16, 16, 16)
        x = self.pool2(self.relu2(self.conv2(x)))  # (B, 16, 8, 8)
        x = self.relu3(self.conv3(x))  # (B, 16, 8, 8)
        x = self.flatten(x)  # (B, 1024)
        x = self.relu4(self.fc1(x))  # (B, 512)
        return self.fc2(x)  # (B, num_classes)


MODELS.add(
    "paper_cnn",
    ModelSpec(
        factory=lambda num_classes: PaperCNN(num_classes),
        input_size=(3, 32, 32),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        description="3-conv CNN of the paper's Table 1 (535,018 parameters, 3x32x32 inputs)",
    ),
)


# --------------------------------------------------------------------------------------------
# CIFAR ResNets (He et al. 2016, section 4.2), option-A shortcuts
# --------------------------------------------------------------------------------------------


class ShortcutA(nn.Module):
    """Parameter-free shortcut ("option A"): subsample by 2, zero-pad channels by ``pad`` each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, C + 2*pad, H/2, W/2)
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2: conv-BN-ReLU, three stages of n blocks (16, 32, 64), pool, linear.

    Module names match the public checkpoints (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
    ``linear``) after the ``module.`` prefix is stripped.
    """

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise NndistError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.in_planes = 16
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():  # the original training code's init
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16, H, W)
        x = self.layer2(x)  # (B, 32, H/2, W/2)
        x = self.layer3(x)  # (B, 64, H/4, W/4)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 64)
        return self.linear(x)  # (B, num_classes)


def _resnet_factory(depth: int) -> Callable[[int], nn.Module]:
    def factory(num_classes: int) -> nn.Module:
        return CifarResNet(depth, num_classes)

    return factory


_RESNET_PARAMS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M"}
for _depth, _params in _RESNET_PARAMS.items():
    MODELS.add(
        f"cifar_resnet{_depth}",
        ModelSpec(
            factory=_resnet_factory(_depth),
            input_size=(3, 32, 32),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            description=f"CIFAR ResNet-{_depth} of He et al. 2016, option-A shortcuts ({_params} parameters)",
            extra={"depth": _depth},
        ),
    )


# --------------------------------------------------------------------------------------------
# Lookup and construction
# --------------------------------------------------------------------------------------------


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
        )
    try:
        return MODELS.get(name)
    except UnknownNameError:
        valid = ", ".join(MODELS.names())
        raise UnknownNameError(
            f"unknown model {name!r}; valid names: {valid}, or torchvision:<name> (e.g. torchvision:resnet18)"
        ) from None


def _is_path_like(weights: str | os.PathLike[str]) -> bool:
    s = str(weights)
    return isinstance(weights, os.PathLike) or s.endswith(CHECKPOINT_SUFFIXES) or os.sep in s or Path(s).exists()


def _torchvision_pretrained(tv_name: str, weights: str, num_classes: int | None) -> nn.Module:
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
    spec = get_model_spec(name)
    if name.startswith(TORCHVISION_PREFIX) and weights is not None and not _is_path_like(weights):
        model = _torchvision_pretrained(name[len(TORCHVISION_PREFIX) :], str(weights), num_classes)
    else:
        model = spec.factory(spec.num_classes if num_classes is None else num_classes)
        if weights is not None:
            load_weights(model, weights)
    model.nndist_name = name  # type: ignore[assignment]
    return model


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


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


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise NndistError(
        f"{path}: holds no state dict (expected a dict of tensors, or a dict with 'state_dict' or 'model')"
    )


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Reads a checkpoint's state dict without running any pickled code.

    Args:
        path: ``.th``/``.pt``/``.pth`` (PyTorch, read with ``weights_only=True``) or ``.safetensors``.

    Returns:
        ``(state_dict, metadata)``: keys with any ``module.`` prefix stripped; the safetensors
        metadata (empty for PyTorch files).

    Raises:
        NndistError: Missing file, SHA-256 prefix mismatch, corrupt file or unsafe pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise NndistError(f"checkpoint {path} does not exist; pass the path of a .th/.pt/.pth/.safetensors file")
    _check_sha_prefix(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                metadata = dict(fh.metadata() or {})
                sd = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise NndistError(
                f"{path}: not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                "it is truncated or corrupt: write it again"
            ) from exc
        return _strip_prefix(sd), metadata
    if suffix in (".th", ".pt", ".pth"):
        try:
            with warnings.catch_warnings():
                # Raised for plain pickles; the weights-only unpickler still refuses anything unsafe.
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise NndistError(
                f"{path}: refused to load: it holds Python objects other than tensors (a pickle that could "
                "run code) or is corrupt; nndist reads PyTorch files only with weights_only=True: "
                "save a plain state dict or use .safetensors"
            ) from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise NndistError(
                f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                "it is truncated or corrupt"
            ) from exc
        return _strip_prefix(_extract_state_dict(obj, path)), {}
    raise NndistError(f"{path}: unknown checkpoint type {suffix!r}; use .th, .pt, .pth or .safetensors")


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
        if _is_path_like(s):
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


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``data``.

    Args:
        model: The classifier; put in eval mode (and restored afterwards).
        data: An :class:`nndist.data.ImageData` (normalised batch by batch with ``mean``/``std``,
            by default the model spec's normalisation) or a tuple ``(inputs, labels)`` of
            already-normalised float inputs ``(N, C, H, W)`` and int labels ``(N,)``.
        batch_size: Images per forward pass.
        device: Where to run; default CUDA if available, else CPU.
        progress: Show a tqdm progress bar.

    Returns:
        ``{"top1": percent, "n": count, "loss": mean cross-entropy}``.
    """
    from tqdm.auto import tqdm

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(data, (tuple, list)):
        inputs, labels = data
        n = int(labels.shape[0])

        def batch(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            return inputs[lo:hi].to(dev, torch.float32), labels[lo:hi].to(dev)

    else:
        if mean is None or std is None:
            name = getattr(model, "nndist_name", None)
            spec = get_model_spec(name) if isinstance(name, str) else None
            mean = mean or (spec.mean if spec else IMAGENET_MEAN)
            std = std or (spec.std if spec else IMAGENET_STD)
        n = len(data.labels)

        def batch(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.arange(lo, hi)
            return data.normalized(mean, std, indices=idx, device=dev), data.labels[lo:hi].to(dev)

    was_training = model.training
    model.to(dev).eval()
    correct, loss_sum = 0, 0.0
    try:
        with torch.no_grad():
            bar = tqdm(total=n, desc="evaluate", unit="img", disable=not progress, leave=False)
            for lo in range(0, n, batch_size):
                x, y = batch(lo, min(n, lo + batch_size))
                logits = model(x)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                bar.update(len(y))
            bar.close()
    finally:
        model.train(was_training)
    if n == 0:
        return {"top1": math.nan, "n": 0, "loss": math.nan}
    return {"top1": 100.0 * correct / n, "n": n, "loss": loss_sum / n}
