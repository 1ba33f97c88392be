"""nndist: distributions of parameters, features and channel-wise gradients of deep networks.

The public API (pinned by ``tests/test_public_api.py``):

- :func:`emission_absorption`: per-sample, per-channel Emission and Absorption of local gradients.
- :class:`Summary`, :func:`summarize`, :func:`wasserstein`, :func:`ks_distance`: streaming,
  mergeable distribution summaries; :func:`weight_table`: the summary of every tensor of a weights
  file, folder or module.
- :func:`run_reproduce` / :class:`ReproduceConfig`: the paper's initialisation study.
- :func:`run_gradients` / :class:`GradientsConfig`: channel-wise gradients over a dataset.
- :class:`Monitor`: weights, gradients and features of the user's own training loop, step by step.
- :func:`run_compare`: two or more checkpoints (any weights file, a run, a model) compared tensor
  by tensor, as a run directory.
- Registries: :func:`create_model`, :func:`list_models`, :func:`register_model`,
  :func:`init_model`, :func:`list_inits`, :func:`load_split`, :func:`register_handler`.

The names are loaded on first use (PEP 562), so ``import nndist`` and ``nndist --help`` import no
torch; each lives in the layer that owns it (see ``docs/CONTRACTS.md``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "GradientsConfig": "nndist.studies.gradient_config",
    "Monitor": "nndist.studies.monitor",
    "NndistError": "nndist.errors",
    "ReproduceConfig": "nndist.studies.init_config",
    "Summary": "nndist.stats.summary",
    "UnknownNameError": "nndist.errors",
    "create_model": "nndist.models.checkpoints",
    "emission_absorption": "nndist.probes.gradients",
    "init_model": "nndist.inits",
    "ks_distance": "nndist.stats.distances",
    "list_inits": "nndist.inits",
    "list_models": "nndist.models.registry",
    "load_split": "nndist.data.sources",
    "load_weights": "nndist.models.checkpoints",
    "random_inputs": "nndist.data.subsets",
    "register_handler": "nndist.probes.gradients",
    "register_model": "nndist.models.registry",
    "run_compare": "nndist.studies.compare",
    "run_gradients": "nndist.studies.gradient_study",
    "run_reproduce": "nndist.studies.init_study",
    "save_checkpoint": "nndist.models.checkpoints",
    "stratified_subset": "nndist.data.subsets",
    "summarize": "nndist.stats.summary",
    "wasserstein": "nndist.stats.distances",
    "weight_table": "nndist.stats.weightstats",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nndist' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .data.sources import load_split
    from .data.subsets import random_inputs, stratified_subset
    from .errors import NndistError, UnknownNameError
    from .inits import init_model, list_inits
    from .models.checkpoints import create_model, load_weights, save_checkpoint
    from .models.registry import list_models, register_model
    from .probes.gradients import emission_absorption, register_handler
    from .stats.distances import ks_distance, wasserstein
    from .stats.summary import Summary, summarize
    from .stats.weightstats import weight_table
    from .studies.compare import run_compare
    from .studies.gradient_config import GradientsConfig
    from .studies.gradient_study import run_gradients
    from .studies.init_config import ReproduceConfig
    from .studies.init_study import run_reproduce
    from .studies.monitor import Monitor
