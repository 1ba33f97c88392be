"""Shared fixtures: where the real data and checkpoints are (skips with a reason otherwise)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ``make test`` runs one pytest-xdist worker per core: each worker computes on one thread (two
# workers of two threads each would fight over two cores), and its subprocesses inherit that.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def _env_dir(var: str) -> Path | None:
    value = os.environ.get(var)
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The shared CIFAR-10 image folder (train/ and test/), from NNDIST_DATA_DIR."""
    root = _env_dir("NNDIST_DATA_DIR")
    if root is None:
        pytest.skip("NNDIST_DATA_DIR is unset: set it to ../shared/data to run tests on real CIFAR-10")
    path = root / "cifar10-jpeg"
    if not path.is_dir():
        pytest.skip(f"{path} does not exist: NNDIST_DATA_DIR must hold cifar10-jpeg/")
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The shared pretrained CIFAR ResNet checkpoints, from NNDIST_MODELS_DIR or beside NNDIST_DATA_DIR."""
    root = _env_dir("NNDIST_MODELS_DIR")
    if root is None:
        data = _env_dir("NNDIST_DATA_DIR")
        if data is not None and (data.parent / "models").is_dir():
            root = data.parent / "models"
    if root is None:
        pytest.skip("NNDIST_MODELS_DIR is unset (and no models/ beside NNDIST_DATA_DIR): set it to ../shared/models")
    return root
