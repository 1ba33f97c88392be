"""Where everything lives in a run directory: every file name, the layer stem, stages, run keys.

This module is the only place that spells a path inside a run directory; writers, readers,
figures, TensorBoard, the report and the test fixtures all ask it. ``docs/CONTRACTS.md`` lists
the same names and a test checks that the two agree.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "AFTER",
    "BEFORE",
    "CHANNEL_NORMS",
    "CHECKPOINTS_DIR",
    "CLAIMS",
    "COMPARE",
    "FIGURES_DIR",
    "FIGURE_FORMATS",
    "GRADIENTS",
    "KIND_FIGURES",
    "KINDS",
    "MANIFEST",
    "MONITOR",
    "PER_SAMPLE_DIR",
    "PER_SAMPLE_ORDER",
    "REPORT",
    "REPRODUCE",
    "STATE_DIR",
    "STATE_FILES",
    "TB_DIR",
    "checkpoint_file",
    "epoch_stage",
    "figure_file",
    "layer_file_stem",
    "lock_file",
    "retired_dir",
    "staging_dir",
    "parse_run_key",
    "PART_DIGITS",
    "part_file",
    "part_name",
    "parse_part_step",
    "per_sample_file",
    "run_key",
    "stage_epoch",
    "stage_order",
    "table_file",
]

#: Kinds of run directory (the manifest's ``kind``): the two studies, a training loop watched by
#: ``nndist.Monitor``, and a comparison of checkpoints.
REPRODUCE, GRADIENTS, MONITOR, COMPARE = "reproduce", "gradients", "monitor", "compare"
KINDS: tuple[str, ...] = (REPRODUCE, GRADIENTS, MONITOR, COMPARE)

MANIFEST = "manifest.json"
CLAIMS = "claims.csv"
REPORT = "report.html"
TB_DIR = "tb"
FIGURES_DIR = "figures"
CHECKPOINTS_DIR = "checkpoints"
STATE_DIR = "state"
PER_SAMPLE_DIR = "per_sample"
PER_SAMPLE_ORDER = f"{PER_SAMPLE_DIR}/order.npy"
CHANNEL_NORMS = "channel_norms.npz"
#: Resume state of each kind of run.
STATE_FILES: dict[str, str] = {REPRODUCE: f"{STATE_DIR}/train.pt", GRADIENTS: f"{STATE_DIR}/gradients.pt"}

#: Formats of the static figures: the paper's figures in PNG and SVG, per-layer figures in PNG.
FIGURE_FORMATS: dict[str, tuple[str, ...]] = {
    "fig1_loss": ("png", "svg"), "fig2_weights": ("png", "svg"), "fig3_features": ("png", "svg"),
    "evolution": ("png", "svg"), "overview": ("png", "svg"), "fig4": ("png",), "heatmap": ("png",),
    "compare_shift": ("png", "svg"), "compare_histograms": ("png", "svg"),
    # monitor runs: one figure per table (``_<table>``), drawn for every watched layer
    "bands": ("png",), "std_heatmap": ("png",), "last_histograms": ("png",), "channel_gradients": ("png",),
}
#: The static figures of each kind of run (names of :data:`FIGURE_FORMATS`).
KIND_FIGURES: dict[str, tuple[str, ...]] = {
    REPRODUCE: ("fig1_loss", "fig2_weights", "fig3_features", "evolution"),
    GRADIENTS: ("overview", "fig4", "heatmap"),
    COMPARE: ("compare_shift", "compare_histograms"),
    MONITOR: ("bands", "std_heatmap", "last_histograms", "channel_gradients"),
}

#: Stages of the distributions of a reproduce run; ``epoch_K`` lies between them.
BEFORE, AFTER = "before", "after"
_EPOCH = re.compile(r"^epoch_(\d+)$")


def lock_file(run_dir: Path) -> Path:
    """The lock held by the process writing ``run_dir``: a hidden file beside it (the directory
    itself may be replaced by an ``--overwrite`` run)."""
    return run_dir.parent / f".{run_dir.name}.nndist-lock"


def staging_dir(run_dir: Path) -> Path:
    """Where an ``--overwrite`` run writes until it has finished; then it replaces ``run_dir``."""
    return run_dir.parent / f".{run_dir.name}.nndist-new"


def retired_dir(run_dir: Path) -> Path:
    """Where the replaced results wait, for the moment of the swap, before they are deleted."""
    return run_dir.parent / f".{run_dir.name}.nndist-old"


def table_file(name: str) -> str:
    """The Parquet file of table ``name`` (``"loss"`` -> ``loss.parquet``)."""
    return f"{name}.parquet"


_PART = re.compile(r"^part-(\d+)\.parquet$")
#: Digits of the step in a part's name: names sort in step order.
PART_DIGITS = 12


def part_file(name: str, step: int) -> str:
    """One logging step's rows of table ``name`` while a monitor runs: ``<name>.parquet/part-<step>.parquet``.

    The folder ``<name>.parquet`` reads as one table (``pandas.read_parquet``); ``close()``
    compacts it into the single file :func:`table_file` names.
    """
    return f"{table_file(name)}/{part_name(step)}"


def part_name(step: int) -> str:
    """The file name of one step's part: ``part-<step, zero-padded>.parquet``."""
    return f"part-{int(step):0{PART_DIGITS}d}.parquet"


def parse_part_step(filename: str) -> int | None:
    """The step of a part's file name (``part-000000000017.parquet`` -> 17), None for other names."""
    m = _PART.match(filename)
    return int(m.group(1)) if m else None


def layer_file_stem(layer: str) -> str:
    """A layer's module name as a file-name stem: ``/`` becomes ``_``; the root module is ``model``."""
    return layer.replace("/", "_") or "model"


def per_sample_file(layer: str, stat: str) -> str:
    """Per-sample array of one layer and statistic: ``per_sample/<stem>.<stat>.npy``."""
    return f"{PER_SAMPLE_DIR}/{layer_file_stem(layer)}.{stat}.npy"


def figure_file(name: str, layer: str | None = None, fmt: str = "png") -> str:
    """A figure's path: ``figures/<name>.<fmt>``, or ``figures/<name>_<stem>.<fmt>`` for a layer's."""
    stem = name if layer is None else f"{name}_{layer_file_stem(layer)}"
    return f"{FIGURES_DIR}/{stem}.{fmt}"


def run_key(init: str, seed: int) -> str:
    """One run of a reproduce study: ``<init>`` for seed 0, else ``<init>-seed<S>``."""
    return init if int(seed) == 0 else f"{init}-seed{int(seed)}"


def parse_run_key(key: str) -> tuple[str, int]:
    """Inverse of :func:`run_key`."""
    init, sep, seed = key.rpartition("-seed")
    if sep and seed.isdigit():
        return init, int(seed)
    return key, 0


def checkpoint_file(key: str, stage: str) -> str:
    """A run's checkpoint at a stage: ``checkpoints/<run key>/<stage>.safetensors``."""
    return f"{CHECKPOINTS_DIR}/{key}/{stage}.safetensors"


def epoch_stage(epoch: int) -> str:
    """The stage name of the distributions measured after epoch ``epoch``."""
    return f"epoch_{int(epoch)}"


def stage_epoch(stage: str, last_epoch: int) -> int | None:
    """The epoch a stage stands for: ``before`` 0, ``epoch_K`` K, ``after`` the last; None if unknown."""
    if stage == BEFORE:
        return 0
    if stage == AFTER:
        return int(last_epoch)
    m = _EPOCH.match(str(stage))
    return int(m.group(1)) if m else None


def stage_order(stage: str) -> int:
    """Sort key of stages: ``before``, then ``epoch_1``, ``epoch_2``, ..., then ``after``."""
    epoch = stage_epoch(stage, 10**9)
    return -1 if epoch is None else epoch
