"""What both studies resolve the same way: devices, configs from files or a resumed run's manifest.

The studies' configs are dataclasses; a config file (JSON, keys as in ``manifest.json``'s
``config``) or the manifest of a run being resumed supplies values, and explicit values override
them (timm's ``train.py`` habit). Resuming reads the whole config from the manifest, so a resumed
run needs nothing but its directory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, TypeVar

import torch

from ..dist import DistInfo, rank_device
from ..errors import NndistError
from ..results import layout

__all__ = ["config_from_file", "config_from_run", "resolve_device", "study_config", "study_device"]

C = TypeVar("C")


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:K``: a device that exists here.

    Raises:
        NndistError: CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NndistError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise NndistError(f"--device {name!r}: not a device; use cpu, cuda, cuda:K or auto") from None


def study_device(name: str, info: DistInfo) -> torch.device:
    """This rank's device for a study run with ``--device name``."""
    return resolve_device(rank_device(name, info))


def _from_mapping(cls: type[C], values: Mapping[str, Any], source: str, overrides: Mapping[str, Any]) -> C:
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise NndistError(f"{source}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    merged = dict(values)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if isinstance(merged.get(f.name), list):
            merged[f.name] = tuple(merged[f.name])  # JSON lists back to the config's tuples
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**merged)


def config_from_file(cls: type[C], path: str | Path, **overrides: Any) -> C:
    """A config from a JSON file of options (keys as in ``manifest.json``'s ``config``), then ``overrides``.

    Raises:
        NndistError: unreadable file or an unknown option.
    """
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise NndistError(f"cannot read options from {path}: {exc}") from None
    if not isinstance(values, dict):
        raise NndistError(f"{path}: expected a JSON object of options, got {type(values).__name__}")
    return _from_mapping(cls, values, str(path), overrides)


def config_from_run(cls: type[C], run_dir: str | Path, kind: str) -> C:
    """The config of a run directory being resumed, from its manifest.

    Raises:
        NndistError: not a run directory of ``kind``.
    """
    path = Path(run_dir) / layout.MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise NndistError(f"--resume {run_dir}: no readable {layout.MANIFEST} there, so it is not a run directory to resume") from None
    if manifest.get("kind") != kind:
        raise NndistError(f"--resume {run_dir}: it is a {manifest.get('kind')!r} run, not a {kind} run")
    config = manifest.get("config") or {}
    model = str(config.get("model", ""))
    if model.startswith(("callable:", "module:")):
        raise NndistError(f"--resume {run_dir}: the run measured a model passed in from Python ({model.split(':', 1)[1]}), which "
                          f"its manifest cannot rebuild; resume it from Python with the same model: resume=True and a {cls.__name__}")
    return _from_mapping(cls, config, str(path), {})


def study_config(cls: type[C], config: C | None, out_dir: str | Path, *, resume: bool, kind: str) -> C:
    """The config a study runs with: ``config``, or with ``config=None`` and ``resume`` the run's own.

    Raises:
        NndistError: ``config`` is None without ``resume``.
    """
    if config is not None:
        return config
    if not resume:
        raise NndistError(f"a {kind} run needs a {cls.__name__} (config=None only with resume=True)")
    return config_from_run(cls, out_dir, kind)
