"""The initialisation study's configuration and data: what a ``reproduce`` run trains on.

:class:`ReproduceConfig` is saved in the manifest and in every checkpoint; :func:`load_study_data`
turns it into normalised tensors (train, valid and random inputs), checked before any output is
written.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torch import nn

from ..data import load_split, random_inputs, resolve_samples, stratified_subset
from ..errors import NndistError
from ..models import build_model, get_model_spec
from ..paper import PAPER_BATCH_SIZE, PAPER_INITS, PAPER_LAYERS, PAPER_LR, PAPER_WEIGHT_DECAY, PROFILES

__all__ = ["ReproduceConfig", "StudyData", "build_run_model", "factory_name", "load_study_data"]


@dataclass
class ReproduceConfig:
    """Resolved configuration of a ``reproduce`` run (saved in the manifest and checkpoints).

    Attributes:
        profile: ``quick`` or ``paper``; supplies defaults for epochs and subset sizes.
        data: ``cifar10``, ``shapes`` or a path to an image folder with train/ and test/.
        model: a registered model name (default the paper's CNN), or a callable that returns a
            fresh ``nn.Module`` when called with no arguments (one per scheme and seed, then
            initialised by the scheme; normalisation then from ``mean``/``std`` or the data).
        inits: initialisation schemes (registry names).
        layers: module names whose distributions are studied.
        epochs: training epochs.
        train_samples: training images (int or ``"all"``), a class-stratified subset.
        valid_samples: held-out images (int or ``"all"``); the random input uses as many.
        batch_size: Adam batch size (paper: 64).
        lr: Adam learning rate (paper: 1e-4).
        weight_decay: Adam weight decay (paper: 0).
        seed: data-order and subset seed; every init sees the same batches.
        seeds: number of initialisation seeds per scheme.
        init_seed: first initialisation seed (run s of a scheme uses init_seed + s).
        gain: gain for the init schemes (None: ReLU gain for Kaiming, 1 for Xavier/orthogonal).
        bias_init: override of the bias initialisation (``default``, ``zeros``, ``ones`` or a number).
        every_epoch: also measure distributions after every epoch.
        mean: per-channel normalisation mean (None: the model's default).
        std: per-channel normalisation std (None: the model's default).
        device: ``cpu``, ``cuda`` or ``auto``.
        eval_batch_size: batch size of measurement passes.
        checkpoint_every: also save training state every K steps (None: at epoch ends only).
        skip_bad_images: skip unreadable images instead of failing (they are listed).
        from_profile: options filled in from the profile (set by :meth:`resolve`); a profile's
            subset size larger than the data is reduced to all of it, an explicit one is an error.
    """

    profile: str = "quick"
    data: str = "cifar10"
    model: Any = "paper_cnn"
    inits: tuple[str, ...] = PAPER_INITS
    layers: tuple[str, ...] = PAPER_LAYERS
    epochs: int | None = None
    train_samples: int | str | None = None
    valid_samples: int | str | None = None
    batch_size: int = PAPER_BATCH_SIZE
    lr: float = PAPER_LR
    weight_decay: float = PAPER_WEIGHT_DECAY
    seed: int = 0
    seeds: int = 1
    init_seed: int = 1
    gain: float | None = None
    bias_init: str | None = None
    every_epoch: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    device: str = "auto"
    eval_batch_size: int = 1000
    checkpoint_every: int | None = None
    skip_bad_images: bool = False
    from_profile: tuple[str, ...] = ()

    def resolve(self) -> "ReproduceConfig":
        """Fills profile defaults and validates values; returns a new config."""
        if self.profile not in PROFILES:
            raise NndistError(f"unknown profile {self.profile!r}; valid profiles: {', '.join(PROFILES)}")
        values = dataclasses.asdict(self)
        from_profile = list(values.get("from_profile") or [])
        for key, default in PROFILES[self.profile].items():
            if values[key] is None:
                values[key] = default
                from_profile.append(key)
        values["from_profile"] = tuple(dict.fromkeys(from_profile))
        cfg = ReproduceConfig(**values)
        cfg.inits = tuple(cfg.inits)
        cfg.layers = tuple(cfg.layers)
        for name, value in (("epochs", cfg.epochs), ("batch-size", cfg.batch_size), ("seeds", cfg.seeds)):
            if not isinstance(value, int) or value < (0 if name == "epochs" else 1):
                raise NndistError(f"--{name} must be a positive integer, got {value!r}")
        for name in ("train_samples", "valid_samples"):
            value = getattr(cfg, name)
            if value != "all" and (not isinstance(value, int) or value < 1):
                raise NndistError(f"--{name.replace('_', '-')} must be a positive integer or 'all', got {value!r}")
        if not cfg.inits:
            raise NndistError("--inits is empty; give at least one init scheme")
        if len(set(cfg.inits)) != len(cfg.inits):
            raise NndistError(f"--inits lists a scheme twice: {','.join(cfg.inits)}")
        if cfg.lr <= 0:
            raise NndistError(f"--lr must be positive, got {cfg.lr}")
        if not (isinstance(cfg.model, str) or callable(cfg.model)):
            raise NndistError(f"model must be a registered name or a callable returning an nn.Module, got {type(cfg.model).__name__}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model"] = factory_name(self.model)
        for key in ("inits", "layers", "from_profile", "mean", "std"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d


def factory_name(model: Any) -> str:
    """How a config names its model: the registry name, or ``callable:<qualified name>``."""
    if isinstance(model, str):
        return model
    return f"callable:{getattr(model, '__module__', '?')}.{getattr(model, '__qualname__', type(model).__name__)}"


def build_run_model(cfg: ReproduceConfig, num_classes: int) -> nn.Module:
    """A fresh model of the study: by name for the data's classes, or from the config's callable.

    Raises:
        NndistError: the callable does not return an ``nn.Module``.
    """
    if isinstance(cfg.model, str):
        return build_model(cfg.model, num_classes)
    model = cfg.model()
    if not isinstance(model, nn.Module):
        raise NndistError(f"the model factory {factory_name(cfg.model)} returned {type(model).__name__}, not an nn.Module")
    return model


@dataclass
class StudyData:
    """The normalised inputs of a study, on its device.

    Attributes:
        x_train, y_train: the selected training images (N, C, H, W) and labels (N,).
        x_valid, y_valid: the selected held-out images and labels.
        x_random: i.i.d. N(0, 1) inputs of the same shape, as many as the valid images.
        train_idx, valid_idx: positions of the selected images in each split's sorted order.
        classes: class names; bad_files: files skipped with ``skip_bad_images``.
        mean, std: the normalisation used.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor
    x_random: torch.Tensor
    train_idx: np.ndarray
    valid_idx: np.ndarray
    classes: list[str]
    bad_files: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    seconds: float = 0.0

    def inputs(self) -> dict[str, torch.Tensor]:
        """Input type -> tensor, in the paper's order (train, valid, random)."""
        return {"train": self.x_train, "valid": self.x_valid, "random": self.x_random}


def load_study_data(cfg: ReproduceConfig, device: torch.device, *, progress: bool) -> StudyData:
    """Loads, subsets and normalises the data of a resolved config.

    Raises:
        NndistError: an unknown model or data source, a subset larger than the data (given
            explicitly), or normalisation values that make inputs non-finite.
    """
    spec = get_model_spec(cfg.model) if isinstance(cfg.model, str) else None
    t0 = time.perf_counter()
    train = load_split(cfg.data, "train", skip_bad_images=cfg.skip_bad_images, progress=progress)
    valid = load_split(cfg.data, "test", skip_bad_images=cfg.skip_bad_images, progress=progress)
    indices = {}
    for name, split in (("train_samples", train), ("valid_samples", valid)):
        n = resolve_samples(getattr(cfg, name), len(split.labels), option=f"--{name.replace('_', '-')}",
                            what=f"the {split.split} split of {cfg.data}", from_default=name in cfg.from_profile)
        indices[name] = stratified_subset(split.labels, "all" if n == len(split.labels) else n, seed=cfg.seed)
    if cfg.mean is not None and cfg.std is not None:
        mean, std = tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
    elif spec is not None:
        mean = tuple(float(v) for v in (cfg.mean if cfg.mean is not None else spec.mean))
        std = tuple(float(v) for v in (cfg.std if cfg.std is not None else spec.std))
    else:  # a user's model: the training images' own statistics
        mean, std = train.pixel_statistics(indices["train_samples"])
    train_idx, valid_idx = indices["train_samples"], indices["valid_samples"]
    x_valid = valid.normalized(mean, std, indices=valid_idx, device=device)
    data = StudyData(
        x_train=train.normalized(mean, std, indices=train_idx, device=device),
        y_train=train.labels[train_idx].to(device),
        x_valid=x_valid,
        y_valid=valid.labels[valid_idx].to(device),
        x_random=random_inputs(len(valid_idx), tuple(x_valid.shape[1:]), seed=cfg.seed).to(device),
        train_idx=train_idx,
        valid_idx=valid_idx,
        classes=list(train.classes),
        bad_files=[str(f) for f in list(train.bad_files) + list(valid.bad_files)],
        mean=mean,
        std=std,
        seconds=time.perf_counter() - t0,
    )
    for name, x in (("train", data.x_train), ("valid", data.x_valid)):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise NndistError(f"{bad} non-finite values in the normalised {name} inputs; check --mean/--std (std must be non-zero)")
    return data
