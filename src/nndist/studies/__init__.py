"""The studies: the initialisation study (``reproduce``), channel-wise gradients, evaluation,
comparing checkpoints."""

from __future__ import annotations

from .compare import run_compare
from .evaluate import evaluate_model
from .gradient_config import GradientsConfig
from .gradient_study import GradientStudy, run_gradients
from .init_config import ReproduceConfig
from .init_study import InitStudy, run_reproduce
from .training import RunSet, evaluate_runs, run_adam

__all__ = [
    "GradientStudy",
    "GradientsConfig",
    "InitStudy",
    "ReproduceConfig",
    "RunSet",
    "evaluate_model",
    "evaluate_runs",
    "run_adam",
    "run_compare",
    "run_gradients",
    "run_reproduce",
]
