"""Summaries as table rows: what the studies measure of weights and features.

A summary row is the key columns of a table followed by :data:`~nndist.stats.SUMMARY_COLUMNS`;
a histogram row is one non-empty bin (``left``, ``right``, ``count``) on the fixed global edges.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..probes import layer_modules, stream_features
from .summary import Summary

__all__ = ["feature_summaries", "histogram_rows", "summary_row", "weight_summaries"]


def summary_row(summary: Summary, keys: Mapping[str, Any]) -> dict[str, Any]:
    """``keys`` followed by the summary columns of a scalar summary."""
    return {**keys, **summary.rows()[0]}


def histogram_rows(summary: Summary, keys: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per non-empty bin of a scalar summary: ``keys`` and ``left``, ``right``, ``count``."""
    edges, counts = summary.histogram()
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts)
    return [dict(keys, left=float(edges[i]), right=float(edges[i + 1]), count=int(counts[i])) for i in np.nonzero(counts)[0]]


def weight_summaries(model: nn.Module, layers: Sequence[str]) -> dict[tuple[str, str], Summary]:
    """Summaries of each layer's own parameters: ``{(layer, param): Summary}``.

    Parameters are small: they are summarised in float64, so moments are exact to 1e-12.
    """
    return {
        (layer, pname): Summary().update(p.detach().double())
        for layer, module in layer_modules(model, layers).items()
        for pname, p in module.named_parameters(recurse=False)
    }


def feature_summaries(
    model: nn.Module,
    layers: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    *,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> dict[tuple[str, str], Summary]:
    """Each layer's output over each input set, streamed: ``{(layer, input_type): Summary}``.

    No feature tensor outlives its batch (see :func:`nndist.probes.stream_features`).
    """
    out: dict[tuple[str, str], Summary] = {}

    def consume(layer: str, input_type: str, output: torch.Tensor) -> None:
        out.setdefault((layer, input_type), Summary()).update(output)

    stream_features(model, layers, inputs, consume, batch_size=batch_size, progress=progress)
    return out
