"""The data layer: image sources by name or path, decoded once, subsets and random inputs."""

from __future__ import annotations

from .cifar10 import load_cifar10
from .folder import IMAGE_EXTENSIONS, load_image_folder
from .images import RESIZE_MODES, SPLITS, ImageData, cache_root
from .shapes import SHAPES_CLASSES, generate_shapes
from .sources import DATASETS, load_split
from .subsets import parse_samples, random_inputs, resolve_samples, stratified_subset

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "RESIZE_MODES",
    "SHAPES_CLASSES",
    "SPLITS",
    "ImageData",
    "cache_root",
    "generate_shapes",
    "load_cifar10",
    "load_image_folder",
    "load_split",
    "parse_samples",
    "random_inputs",
    "resolve_samples",
    "stratified_subset",
]
