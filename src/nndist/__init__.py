"""nndist: distributions of parameters, features and channel-wise gradients of deep networks.

The public API (pinned by ``tests/test_public_api.py``):

- :func:`emission_absorption`: per-sample, per-channel Emission and Absorption of local gradients.
- :class:`Summary`, :func:`summarize`, :func:`wasserstein`, :func:`ks_distance`: streaming,
  mergeable distribution summaries.
- :func:`run_reproduce` / :class:`ReproduceConfig`: the paper's initialisation study.
- :func:`run_gradients` / :class:`GradientsConfig`: channel-wise gradients over a dataset.
- Registries: :func:`create_model`, :func:`list_models`, :func:`init_model`, :func:`list_inits`,
  :func:`load_split`, :func:`register_handler`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .data import load_split, random_inputs, stratified_subset
from .errors import NndistError, UnknownNameError
from .gradient_study import GradientsConfig, run_gradients
from .gradients import emission_absorption, register_handler
from .inits import init_model, list_inits
from .models import create_model, list_models, load_weights, save_checkpoint
from .reproduce import ReproduceConfig, run_reproduce
from .stats import Summary, ks_distance, summarize, wasserstein

__all__ = [
    "GradientsConfig",
    "NndistError",
    "ReproduceConfig",
    "Summary",
    "UnknownNameError",
    "__version__",
    "create_model",
    "emission_absorption",
    "init_model",
    "ks_distance",
    "list_inits",
    "list_models",
    "load_split",
    "load_weights",
    "random_inputs",
    "register_handler",
    "run_gradients",
    "run_reproduce",
    "save_checkpoint",
    "stratified_subset",
    "summarize",
    "wasserstein",
]
