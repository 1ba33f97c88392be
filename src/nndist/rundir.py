"""The run directory shared by ``nndist reproduce`` and ``nndist gradients``.

Preparing the output directory (new, ``--overwrite`` or ``--resume``), the versions and times
written into every manifest, the device choice, the conversion of resume state to tensors that
load with ``torch.load(weights_only=True)``, and the finishing step (TensorBoard events, claims
and report) of a completed run.
"""

from __future__ import annotations

import datetime as _dt
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import __version__, kernels
from .errors import NndistError
from .io import clean_temporaries

__all__ = ["finish_run_directory", "from_saved", "prepare_output_dir", "resolve_device", "to_saveable", "utc_now", "versions"]


def versions() -> dict[str, str]:
    import matplotlib
    import scipy
    import torchvision

    return {
        "nndist": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
        "numba": getattr(kernels.numba, "__version__", "not installed"),
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
    }


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NndistError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def prepare_output_dir(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Checks that ``out`` may be written: new, empty, or allowed by ``overwrite``/``resume``."""
    if out.exists() and not out.is_dir():
        raise NndistError(f"output path {out} exists and is not a directory; choose another --out")
    if resume:
        if not (out / "manifest.json").is_file():
            raise NndistError(f"--resume {out}: no manifest.json there, so it is not a run directory to resume")
        clean_temporaries(out)
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise NndistError(f"output directory {out} is not empty; pass --overwrite to replace it or --resume to continue it")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".nndist-write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise NndistError(f"output directory {out} is not writable ({exc.strerror}); choose another --out") from None


def to_saveable(obj: Any) -> Any:
    """numpy -> torch so the state loads with ``torch.load(weights_only=True)``."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_saveable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_saveable(v) for v in obj]
    return obj


def from_saved(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: from_saved(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_saved(v) for v in obj]
    return obj


def finish_run_directory(run_dir: Path) -> None:
    """Writes TensorBoard events, claims.csv and report.html for a completed run directory."""
    import warnings

    try:
        from .tb import write_tensorboard

        write_tensorboard(run_dir)
    except NndistError as exc:  # tensorboard is an optional extra
        warnings.warn(f"TensorBoard events not written: {exc}", stacklevel=2)
    from .claims import write_claims
    from .report import write_report

    write_claims(run_dir)
    write_report(run_dir)
