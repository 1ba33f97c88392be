"""The gradients study's configuration and the model it measures.

:class:`GradientsConfig` is saved in the manifest. :func:`measured_model` builds the model the way
a run needs it, reproducibly: named models without weights get seeded random weights (and say
so), a torchvision model's 1000-class head is replaced by one for the data's classes (unless
``keep_head``), and a user's own ``nn.Module`` is measured as it is. :func:`fingerprint` lets a
resumed run refuse a model that is not the one it started with.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import NndistError
from ..models import ModelSpec, get_model_spec, load_model
from ..models.registry import TORCHVISION_PREFIX
from ..probes.gradients import DEFINITIONS, layers_like_author

__all__ = [
    "GradientsConfig", "MATRIX_AUTO_LIMIT", "chosen_layers", "fingerprint", "fit_to_data", "measured_model",
    "model_name", "model_spec", "select_names",
]

#: ``channel_matrices="auto"`` keeps the (C_out, C_in) matrix of a layer with at most this many entries.
MATRIX_AUTO_LIMIT = 256 * 256


@dataclass
class GradientsConfig:
    """Configuration of a ``gradients`` run (saved in the manifest).

    Attributes:
        model: a registered model name (``cifar_resnet20``, ``torchvision:resnet50``, ``paper_cnn``...)
            or the user's own ``nn.Module`` (measured as it is; the manifest records its class).
        weights: checkpoint path or torchvision weights name (None: random weights, seeded by ``seed``).
        data: ``cifar10``, ``shapes`` or an image folder path.
        split: ``train`` or ``test``.
        samples: number of samples (int or ``"all"``), a class-stratified subset.
        batch_size: samples per batch.
        layers: module names (None: every handled layer).
        layers_like_author: measure the layers of the published code's ``run_*.sh`` for a torchvision
            ResNet (all of its indexed convolutions; see ``nndist.probes.gradients.layers_like_author``).
        loss: ``cross_entropy`` or ``logit`` (``definition="paper"``).
        definition: ``paper`` (eq. 19-20, the default) or ``author_code`` (the published code's).
        per_sample: keep per-sample values as memory-mapped arrays.
        seed: seed of the subset, of random weights and of a replaced head.
        device: ``cpu``, ``cuda`` or ``auto``.
        relative_accuracy: quantile-sketch accuracy of the per-channel summaries.
        chunk_batches: batches per saved chunk (the resume granularity).
        skip_bad_images: skip unreadable images (listed in the manifest).
        image_size: resize images to this size (models that take any size).
        keep_head: keep a torchvision model's own classifier head when the data has other classes.
        mean, std: per-channel normalisation (None: the model's; for a user's module, the data's own).
        channel_matrices: which layers keep their mean ||LG^{c1->c2}|| matrix: ``auto`` (up to
            :data:`MATRIX_AUTO_LIMIT` entries), ``all``, ``none``, or module names.
        layer_figures: which layers get their own Figure 4 and heatmap besides the overview
            figure: ``none``, ``all`` or module names.
        figure: ``paper`` (Figure 4 as the paper draws it) or ``author`` (as the published code:
            Absorption on the first row, Emission on the second, box plots without fliers).
        channels: channels per layer in Figure 4 (the paper's "first 15").
    """

    model: Any = "cifar_resnet20"
    weights: str | None = None
    data: str = "cifar10"
    split: str = "test"
    samples: int | str = "all"
    batch_size: int = 128
    layers: tuple[str, ...] | None = None
    layers_like_author: bool = False
    loss: str = "cross_entropy"
    definition: str = "paper"
    per_sample: bool = True
    seed: int = 0
    device: str = "auto"
    relative_accuracy: float = 0.01
    chunk_batches: int = 20
    skip_bad_images: bool = False
    image_size: int | None = None
    keep_head: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_matrices: str | tuple[str, ...] = "auto"
    layer_figures: str | tuple[str, ...] = "none"
    figure: str = "paper"
    channels: int = 15

    def check(self) -> None:
        """Raises a clear error for a value that cannot work (before anything is loaded)."""
        if self.split not in ("train", "test"):
            raise NndistError(f"--split must be train or test, got {self.split!r}")
        if self.loss not in ("cross_entropy", "logit"):
            raise NndistError(f"--loss must be cross_entropy or logit, got {self.loss!r}")
        if self.definition not in DEFINITIONS:
            raise NndistError(f"--definition must be one of {', '.join(DEFINITIONS)}, got {self.definition!r}")
        if self.definition == "author_code" and self.loss != "cross_entropy":
            raise NndistError("--definition author_code uses the code's own backward seed; drop --loss")
        if self.batch_size < 1:
            raise NndistError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if self.figure not in ("paper", "author"):
            raise NndistError(f"--figure must be paper or author, got {self.figure!r}")
        if self.channels < 1:
            raise NndistError(f"--channels must be a positive integer, got {self.channels}")
        if self.image_size is not None and self.image_size < 1:
            raise NndistError(f"--image-size must be a positive integer, got {self.image_size}")
        if self.layers_like_author and self.layers:
            raise NndistError("--layers-like-author chooses the layers itself; drop --layers")
        if not isinstance(self.model, (str, nn.Module)):
            raise NndistError(f"model must be a registered name or an nn.Module, got {type(self.model).__name__}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model"] = model_name(self.model)
        for key in ("layers", "mean", "std", "channel_matrices", "layer_figures"):
            if isinstance(d[key], tuple):
                d[key] = list(d[key])
        return d


def model_name(model: Any) -> str:
    """How a config names its model: the registry name, or ``module:<class>`` for a user's module."""
    if isinstance(model, nn.Module):
        return f"module:{type(model).__module__}.{type(model).__qualname__}"
    return str(model)


def model_spec(cfg: GradientsConfig) -> ModelSpec | None:
    """The registry's spec of the config's model (None for a user's own module)."""
    return None if isinstance(cfg.model, nn.Module) else get_model_spec(cfg.model)


def _random_weights(build: Any, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # seeded, and the caller's random state untouched
        torch.manual_seed(seed)
        return build()


def _replace_head(model: nn.Module, classes: int, seed: int) -> str | None:
    """Replaces the last ``nn.Linear`` (the classifier) by one with ``classes`` outputs; its name."""
    last = None
    for name, m in model.named_modules():
        if type(m) is nn.Linear:
            last = (name, m)
    if last is None:
        return None
    name, old = last
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = nn.Linear(old.in_features, classes, bias=old.bias is not None)
    model.set_submodule(name, new.to(old.weight.device, old.weight.dtype))
    return name


def measured_model(cfg: GradientsConfig) -> tuple[nn.Module, list[str]]:
    """The model a gradients run measures, with the model's own head, and notices for the user.

    A named model without weights gets random weights seeded by ``cfg.seed`` (the caller's random
    state is left as it was); a user's module is measured as it is.

    Raises:
        NndistError: an unknown model or weights.
    """
    if isinstance(cfg.model, nn.Module):
        return cfg.model, [f"measuring the module passed in ({model_name(cfg.model)}) as it is"]
    if cfg.weights is None:
        model, _ = _random_weights(lambda: load_model(cfg.model), cfg.seed)
        return model, [f"random weights (no --weights given), seeded with --seed {cfg.seed}"]
    model, _ = load_model(cfg.model, cfg.weights)
    return model, []


def fit_to_data(model: nn.Module, cfg: GradientsConfig, classes: int) -> tuple[nn.Module, list[str]]:
    """The model with a head for the data's ``classes``, and what was done to it.

    A registered model is built for the data's classes (its weights must fit them); a torchvision
    model's classifier (its last ``nn.Linear``) is replaced by a seeded random one unless
    ``keep_head``; a user's module is left alone.

    Raises:
        NndistError: a torchvision model without a final ``nn.Linear`` on data of other classes.
    """
    out = _outputs(model)
    if isinstance(cfg.model, nn.Module) or out is None or out == classes:
        return model, []
    if not cfg.model.startswith(TORCHVISION_PREFIX):
        if cfg.weights is None:
            model, _ = _random_weights(lambda: load_model(cfg.model, num_classes=classes), cfg.seed)
        else:
            model, _ = load_model(cfg.model, cfg.weights, num_classes=classes)
        return model, []
    if cfg.keep_head:
        return model, [f"kept the {out}-class head of {cfg.model} on data with {classes} classes (--keep-head)"]
    head = _replace_head(model, classes, cfg.seed)
    return model, [f"replaced the {out}-class head {head} by a {classes}-class one (random, seed {cfg.seed}) for the "
                   "data's classes; --keep-head keeps the model's own"]


def _outputs(model: nn.Module) -> int | None:
    """The number of outputs of the model's last ``nn.Linear`` (its classifier), if it has one."""
    last = None
    for m in model.modules():
        if type(m) is nn.Linear:
            last = m
    return None if last is None else int(last.out_features)


def chosen_layers(cfg: GradientsConfig, model: nn.Module) -> Sequence[str] | None:
    """The layers a run measures (None: every handled one)."""
    if cfg.layers_like_author:
        return layers_like_author(model)
    return cfg.layers


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``model`` (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d buffers too
    return h.hexdigest()


def select_names(option: str | Sequence[str], names: Sequence[str], *, auto: Any = None, what: str) -> list[str]:
    """The names an option picks: ``all``, ``none``, ``auto`` (names for which ``auto(name)`` holds) or a list.

    Raises:
        NndistError: a listed name that is not one of ``names``.
    """
    if isinstance(option, str) and option in ("all", "none", "auto"):
        if option == "all":
            return list(names)
        if option == "none":
            return []
        return [n for n in names if auto is not None and auto(n)]
    wanted = [option] if isinstance(option, str) else list(option)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise NndistError(f"{what}: unknown layer(s) {', '.join(unknown)}; measured layers: {', '.join(names)}")
    return [n for n in names if n in wanted]
