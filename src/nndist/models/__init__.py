"""The model layer: models by name, the paper's CNN, CIFAR ResNets, checkpoints, evaluation."""

from __future__ import annotations

from . import cifar_resnet, paper_cnn  # noqa: F401  (they register their models)
from .checkpoints import (
    create_model,
    load_model,
    load_model_spec,
    load_state_dict_checked,
    load_weights,
    read_state_dict,
    save_checkpoint,
)
from .cifar_resnet import CifarResNet
from .evaluate import evaluate
from .paper_cnn import PaperCNN, paper_cnn_forward
from .registry import (
    CHECKPOINT_SUFFIXES,
    MODELS,
    TORCHVISION_PREFIX,
    ModelSpec,
    build_model,
    get_model_spec,
    list_models,
    register_model,
)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "MODELS",
    "TORCHVISION_PREFIX",
    "CifarResNet",
    "ModelSpec",
    "PaperCNN",
    "build_model",
    "create_model",
    "evaluate",
    "get_model_spec",
    "list_models",
    "load_model",
    "load_model_spec",
    "load_state_dict_checked",
    "load_weights",
    "paper_cnn_forward",
    "read_state_dict",
    "register_model",
    "save_checkpoint",
]
