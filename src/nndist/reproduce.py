"""The initialisation study of the paper (sections 2.1 and 3), end to end.

``run_reproduce(config, out_dir)`` trains the paper's CNN (or any registered model without
BatchNorm) from several initialisation schemes on the same sequence of batches, measures the
distributions of the studied layers' weights, biases and features before and after training
(and at every epoch with ``every_epoch``), and writes a run directory (see docs/CONTRACTS.md):
tables as Parquet, checkpoints as safetensors, figures as PNG and SVG, TensorBoard events,
the paper's claims and an HTML report.

Feature summaries are streamed over the whole selected split, batch by batch, into mergeable
:class:`~nndist.stats.Summary` objects; no feature tensor is kept. Training state is saved at
every epoch end (and every ``checkpoint_every`` steps), so a killed run continues with
``resume=True`` and ends with the same results as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .errors import NndistError
from .io import atomic_path, write_json, write_parquet
from .rundir import finish_run_directory, from_saved, prepare_output_dir, resolve_device, to_saveable, utc_now, versions
from .stats import Summary, ks_distance, wasserstein
from .training import RunSet, evaluate_runs, load_optimizer_state, run_adam

PROFILES: dict[str, dict[str, Any]] = {
    # About 10K train / 2K valid images, 3 epochs, all seven inits: minutes on a laptop CPU.
    "quick": {"epochs": 3, "train_samples": 10000, "valid_samples": 2000},
    # The paper's setting: all of CIFAR-10, 50 epochs.
    "paper": {"epochs": 50, "train_samples": "all", "valid_samples": "all"},
}

INPUT_TYPES = ("train", "valid", "random")
STATE_FILE = "state/train.pt"
# 3: tables as encoded Parquet chunks (2: as rows; still read).
STATE_VERSION = 3


@dataclass
class ReproduceConfig:
    """Resolved configuration of a ``reproduce`` run (saved in the manifest and checkpoints).

    Attributes:
        profile: ``quick`` or ``paper``; supplies defaults for epochs and subset sizes.
        data: ``cifar10``, ``shapes`` or a path to an image folder with train/ and test/.
        model: a registered model name (default the paper's CNN).
        inits: initialisation schemes (registry names).
        layers: module names whose distributions are studied.
        epochs: training epochs.
        train_samples: training images (int or ``"all"``), a class-stratified subset.
        valid_samples: held-out images (int or ``"all"``); the random input uses as many.
        batch_size: Adam batch size (paper: 64).
        lr: Adam learning rate (paper: 1e-4).
        weight_decay: Adam weight decay (paper: 0).
        seed: data-order and subset seed; every init sees the same batches.
        seeds: number of initialisation seeds per scheme.
        init_seed: first initialisation seed (run s of a scheme uses init_seed + s).
        gain: gain for the init schemes (None: ReLU gain for Kaiming, 1 for Xavier/orthogonal).
        bias_init: override of the bias initialisation (``default``, ``zeros``, ``ones`` or a number).
        every_epoch: also measure distributions after every epoch.
        mean: per-channel normalisation mean (None: the model's default).
        std: per-channel normalisation std (None: the model's default).
        device: ``cpu``, ``cuda`` or ``auto``.
        eval_batch_size: batch size of measurement passes.
        checkpoint_every: also save training state every K steps (None: at epoch ends only).
        skip_bad_images: skip unreadable images instead of failing (they are listed).
        from_profile: options filled in from the profile (set by :meth:`resolve`); a profile's
            subset size larger than the data is reduced to all of it, an explicit one is an error.
    """

    profile: str = "quick"
    data: str = "cifar10"
    model: str = "paper_cnn"
    inits: tuple[str, ...] = ("orthogonal", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "ones", "zeros")
    layers: tuple[str, ...] = ("conv1", "conv2", "conv3", "fc1")
    epochs: int | None = None
    train_samples: int | str | None = None
    valid_samples: int | str | None = None
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0
    seeds: int = 1
    init_seed: int = 1
    gain: float | None = None
    bias_init: str | None = None
    every_epoch: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    device: str = "auto"
    eval_batch_size: int = 1000
    checkpoint_every: int | None = None
    skip_bad_images: bool = False
    from_profile: tuple[str, ...] = ()

    def resolve(self) -> "ReproduceConfig":
        """Fills profile defaults and validates values; returns a new config."""
        if self.profile not in PROFILES:
            raise NndistError(f"unknown profile {self.profile!r}; valid profiles: {', '.join(PROFILES)}")
        values = dataclasses.asdict(self)
        from_profile = list(values.get("from_profile") or [])
        for key, default in PROFILES[self.profile].items():
            if values[key] is None:
                values[key] = default
                from_profile.append(key)
        values["from_profile"] = tuple(dict.fromkeys(from_profile))
        cfg = ReproduceConfig(**values)
        cfg.inits = tuple(cfg.inits)
        cfg.layers = tuple(cfg.layers)
        for name, value in (("epochs", cfg.epochs), ("batch-size", cfg.batch_size), ("seeds", cfg.seeds)):
            if not isinstance(value, int) or value < (0 if name == "epochs" else 1):
                raise NndistError(f"--{name} must be a positive integer, got {value!r}")
        for name in ("train_samples", "valid_samples"):
            value = getattr(cfg, name)
            if value != "all" and (not isinstance(value, int) or value < 1):
                raise NndistError(f"--{name.replace('_', '-')} must be a positive integer or 'all', got {value!r}")
        if not cfg.inits:
            raise NndistError("--inits is empty; give at least one init scheme")
        if len(set(cfg.inits)) != len(cfg.inits):
            raise NndistError(f"--inits lists a scheme twice: {','.join(cfg.inits)}")
        if cfg.lr <= 0:
            raise NndistError(f"--lr must be positive, got {cfg.lr}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inits"] = list(self.inits)
        d["layers"] = list(self.layers)
        d["from_profile"] = list(self.from_profile)
        return d


@dataclass
class RunKey:
    """One training run: an init scheme and a seed index."""

    init: str
    seed: int

    @property
    def name(self) -> str:
        return self.init if self.seed == 0 else f"{self.init}-seed{self.seed}"


def _bias_init(value: str | float | None) -> str | float | None:
    """``--bias-init``: a name (default, zeros, ones) or a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_samples(value: str) -> int | str:
    """Parses ``--train-samples``/``--valid-samples``: a positive integer or ``all``."""
    if value == "all":
        return "all"
    try:
        n = int(value)
    except ValueError:
        raise NndistError(f"--samples/--train-samples/--valid-samples {value!r}: must be a positive integer or 'all'") from None
    if n < 1:
        raise NndistError(f"--samples/--train-samples/--valid-samples {n}: must be a positive integer or 'all'")
    return n


# --------------------------------------------------------------------------------------------
# Measurements


def _summary_rows(summary: Summary, base: dict[str, Any]) -> dict[str, Any]:
    row = dict(base)
    row.update(summary.rows()[0])
    return row


def _hist_rows(summary: Summary, base: dict[str, Any]) -> list[dict[str, Any]]:
    edges, counts = summary.histogram()
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts)
    keep = np.nonzero(counts)[0]
    return [dict(base, left=float(edges[i]), right=float(edges[i + 1]), count=int(counts[i])) for i in keep]


def check_layers(model: nn.Module, layers: Sequence[str]) -> None:
    """Raises a clear error if a studied layer name is not a module of ``model``."""
    names = dict(model.named_modules())
    missing = [name for name in layers if name not in names or name == ""]
    if missing:
        valid = ", ".join(n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False)))
        raise NndistError(f"unknown layer name(s) {', '.join(missing)}; layers with parameters in this model: {valid}")


def weight_summaries(model: nn.Module, layers: Sequence[str]) -> dict[tuple[str, str], Summary]:
    """Summaries of each studied layer's weight and bias: {(layer, param): Summary}."""
    modules = dict(model.named_modules())
    out = {}
    for layer in layers:
        for pname, p in modules[layer].named_parameters(recurse=False):
            # Parameters are small: summarise them in float64 so moments are exact to 1e-12.
            out[(layer, pname)] = Summary().update(p.detach().double())
    return out


@torch.no_grad()
def feature_summaries(
    model: nn.Module,
    layers: Sequence[str],
    inputs: dict[str, torch.Tensor],
    *,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> dict[tuple[str, str], Summary]:
    """Streams each input set through ``model`` and summarises each layer's output.

    Args:
        model: the network (put in eval mode here).
        layers: module names whose outputs are summarised.
        inputs: input type -> (N, *input_shape) tensor.
        batch_size: images per forward pass.
        progress: called with the number of images after each batch.

    Returns:
        {(layer, input_type): Summary}; no feature tensor outlives its batch.
    """
    modules = dict(model.named_modules())
    model.eval()
    out: dict[tuple[str, str], Summary] = {}
    current: dict[str, str] = {}

    def make_hook(layer: str):
        def hook(_module: nn.Module, _inp: Any, output: torch.Tensor) -> None:
            key = (layer, current["input"])
            if key not in out:
                out[key] = Summary()
            out[key].update(output.detach())

        return hook

    handles = []
    try:
        for layer in layers:
            handles.append(modules[layer].register_forward_hook(make_hook(layer)))
        for input_type, x in inputs.items():
            current["input"] = input_type
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size]
                model(xb)
                if progress is not None:
                    progress(xb.shape[0])
    finally:
        for h in handles:
            h.remove()
    return out


# --------------------------------------------------------------------------------------------
# State (for --resume)


@dataclass
class _Tables:
    loss: list[dict[str, Any]] = field(default_factory=list)
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    weights: list[dict[str, Any]] = field(default_factory=list)
    features: list[dict[str, Any]] = field(default_factory=list)
    histograms: list[dict[str, Any]] = field(default_factory=list)


# Fixed columns of the tables whose rows always have them (the others take their rows' keys).
TABLE_COLUMNS: dict[str, list[str] | None] = {
    "loss": ["init", "seed", "epoch", "step", "loss"],
    "accuracy": ["init", "seed", "epoch", "split", "accuracy", "loss"],
    "weights": None,
    "features": None,
    "histograms": ["table", "init", "seed", "layer", "param", "input", "stage", "left", "right", "count"],
}


def _encode_rows(rows: list[dict[str, Any]], columns: list[str] | None) -> torch.Tensor:
    """Rows as the bytes of one Parquet file, in a uint8 tensor (loads with weights_only)."""
    buf = io.BytesIO()
    pd.DataFrame(rows, columns=columns).to_parquet(buf, index=False)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _decode_chunks(chunks: list[torch.Tensor], columns: list[str] | None) -> pd.DataFrame:
    """The rows of encoded chunks, in order, as one DataFrame."""
    frames = [pd.read_parquet(io.BytesIO(c.numpy().tobytes())) for c in chunks]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


class _TableChunks:
    """Append-only tables encoded incrementally: each save encodes only the rows added since.

    The training state and the gather between processes carry these chunks instead of the
    rows themselves: a paper run's 270K loss rows and 190K histogram rows as Python dicts took
    15-20 s to copy, pickle and unpickle at every epoch end. A table's chunk count changes
    exactly when it gained rows, so unchanged tables are neither decoded nor rewritten.
    """

    def __init__(self) -> None:
        self.chunks: dict[str, list[torch.Tensor]] = {name: [] for name in TABLE_COLUMNS}
        self.encoded: dict[str, int] = {name: 0 for name in TABLE_COLUMNS}

    def update(self, tables: _Tables) -> dict[str, list[torch.Tensor]]:
        for name, columns in TABLE_COLUMNS.items():
            rows = getattr(tables, name)
            if len(rows) > self.encoded[name]:
                self.chunks[name].append(_encode_rows(rows[self.encoded[name] :], columns))
                self.encoded[name] = len(rows)
        return {name: list(c) for name, c in self.chunks.items()}


# --------------------------------------------------------------------------------------------
# The study


class Study:
    """One ``reproduce`` run; :meth:`run` does everything. See :func:`run_reproduce`."""

    def __init__(self, config: ReproduceConfig, out_dir: str | Path, *, progress: bool = True) -> None:
        self.cfg = config.resolve()
        self.out = Path(out_dir)
        self.progress = progress
        self.device = resolve_device(self.cfg.device)
        self.keys = [RunKey(init, s) for init in self.cfg.inits for s in range(self.cfg.seeds)]
        self.tables = _Tables()
        self._chunks = _TableChunks()
        self._written: dict[str, int] = {}  # chunks behind each table file as last written (rank 0)
        self.before: dict[tuple, Summary] = {}
        self.status: dict[str, dict[str, Any]] = {
            k.name: {"init": k.init, "seed": k.seed, "status": "pending", "diverged_at_step": None}
            for k in self.keys
        }
        self.timings: dict[str, float] = {}

    # ---- set-up -------------------------------------------------------------------------
    def _load_data(self) -> None:
        from .data import load_split, random_inputs, stratified_subset
        from .models import get_model_spec

        cfg = self.cfg
        spec = get_model_spec(cfg.model)
        mean = cfg.mean if cfg.mean is not None else spec.mean
        std = cfg.std if cfg.std is not None else spec.std
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        t0 = time.perf_counter()
        train = load_split(cfg.data, "train", skip_bad_images=cfg.skip_bad_images, progress=self.progress)
        valid = load_split(cfg.data, "test", skip_bad_images=cfg.skip_bad_images, progress=self.progress)
        for option, value, split in (("--train-samples", cfg.train_samples, train), ("--valid-samples", cfg.valid_samples, valid)):
            if value != "all" and value > len(split.labels) and option[2:].replace("-", "_") in cfg.from_profile:
                continue  # the profile's size, larger than this data set: take all of it
            if value != "all" and value > len(split.labels):
                raise NndistError(
                    f"{option} {value}: the {split.split} split of {cfg.data} has {len(split.labels)} images; "
                    f"pass a number from 1 to {len(split.labels)}, or 'all'"
                )
        def size(value: int | str, split: Any) -> int | str:
            return "all" if value == "all" or value >= len(split.labels) else value

        self.train_idx = stratified_subset(train.labels, size(cfg.train_samples, train), seed=cfg.seed)
        self.valid_idx = stratified_subset(valid.labels, size(cfg.valid_samples, valid), seed=cfg.seed)
        self.x_train = train.normalized(self.mean, self.std, indices=self.train_idx, device=self.device)
        self.y_train = train.labels[self.train_idx].to(self.device)
        self.x_valid = valid.normalized(self.mean, self.std, indices=self.valid_idx, device=self.device)
        self.y_valid = valid.labels[self.valid_idx].to(self.device)
        self.x_random = random_inputs(len(self.valid_idx), tuple(self.x_valid.shape[1:]), seed=cfg.seed).to(self.device)
        self.classes = list(train.classes)
        self.bad_files = [str(f) for f in list(train.bad_files) + list(valid.bad_files)]
        self.timings["load_data"] = time.perf_counter() - t0
        for name, x in (("train", self.x_train), ("valid", self.x_valid)):
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                raise NndistError(f"{bad} non-finite values in the normalised {name} inputs; check --mean/--std (std must be non-zero)")

    def _build_runs(self) -> RunSet | None:
        """This rank's runs, stacked (None when it has none); checks layers and input shape first."""
        from .inits import INITS, init_model
        from .models import create_model

        # Every rank checks the model against the data (same error everywhere if it fails).
        probe = create_model(self.cfg.model, num_classes=len(self.classes))
        check_layers(probe, self.cfg.layers)
        for init in self.cfg.inits:
            INITS.get(init)  # an unknown scheme fails before any work, listing the valid ones
        try:
            with torch.no_grad():
                probe.eval()(self.x_train[:1].cpu())
        except NndistError as exc:
            raise NndistError(f"--data {self.cfg.data}: {exc}") from None
        except RuntimeError as exc:
            raise NndistError(
                f"model {self.cfg.model} cannot take inputs of shape {tuple(self.x_train.shape[1:])} from {self.cfg.data}: {str(exc).splitlines()[0]}"
            ) from None
        if not self.my_keys:
            return None
        models = []
        for key in self.my_keys:
            model = create_model(self.cfg.model, num_classes=len(self.classes))
            init_model(model, key.init, gain=self.cfg.gain, bias_init=_bias_init(self.cfg.bias_init), generator=self.cfg.init_seed + key.seed)
            models.append(model)
        return RunSet(models).to(self.device)

    def _manifest(self, finished: bool = False) -> dict[str, Any]:
        return {
            "kind": "reproduce",
            "config": self.cfg.to_dict(),
            "normalisation": {"mean": list(self.mean), "std": list(self.std)},
            "versions": versions(),
            "seeds": {
                "data_order": self.cfg.seed,
                "random_inputs": self.cfg.seed,
                "init": {k.name: self.cfg.init_seed + k.seed for k in self.keys},
            },
            "device": str(self.device),
            "classes": self.classes,
            "subsets": {"train": [int(i) for i in self.train_idx], "valid": [int(i) for i in self.valid_idx]},
            "bad_files": self.bad_files,
            "runs": self.status,
            "timings": self.timings,
            "started": self.started,
            "finished": utc_now() if finished else None,
        }

    # ---- measurement --------------------------------------------------------------------
    def _measure(self, runs: RunSet | None, stage: str) -> None:
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        inputs = {"train": self.x_train, "valid": self.x_valid, "random": self.x_random}
        total = len(self.my_keys) * sum(x.shape[0] for x in inputs.values())
        bar = tqdm(total=total, desc=f"features {stage}", unit="img", disable=not self.progress, leave=False)
        try:
            for r, key in enumerate(self.my_keys):
                model = runs.model(r)
                base = {"init": key.init, "seed": key.seed}
                for (layer, pname), s in weight_summaries(model, self.cfg.layers).items():
                    b = dict(base, layer=layer, param=pname, stage=stage)
                    self.tables.weights.append(_summary_rows(s, b))
                    self.tables.histograms.extend(_hist_rows(s, dict(b, table="weights", input="")))
                    if stage == "before":
                        self.before[("weights", key.name, layer, pname)] = s
                    elif stage == "after":
                        self._shift("weights", key, layer, pname, "", s)
                feats = feature_summaries(model, self.cfg.layers, inputs, batch_size=self.cfg.eval_batch_size, progress=bar.update)
                for (layer, input_type), s in feats.items():
                    b = dict(base, layer=layer, input=input_type, stage=stage)
                    self.tables.features.append(_summary_rows(s, b))
                    self.tables.histograms.extend(_hist_rows(s, dict(b, table="features", param="")))
                    if stage == "before":
                        self.before[("features", key.name, layer, input_type)] = s
                    elif stage == "after":
                        self._shift("features", key, layer, "", input_type, s)
        finally:
            bar.close()
        self.timings[f"measure_{stage}"] = time.perf_counter() - t0

    def _shift(self, table: str, key: RunKey, layer: str, param: str, input_type: str, after: Summary) -> None:
        before = self.before.get((table, key.name, layer, param or input_type))
        if before is None:
            return
        self.shifts.append(
            {
                "table": table,
                "init": key.init,
                "seed": key.seed,
                "layer": layer,
                "param": param,
                "input": input_type,
                "wasserstein": float(wasserstein(before, after)),
                "ks": float(ks_distance(before, after)),
            }
        )

    def _save_checkpoints(self, runs: RunSet | None, stage: str) -> None:
        """Rank 0 writes every run's checkpoint (the others send theirs)."""
        from .distributed import gather_to_main
        from .models import save_checkpoint

        mine = [(key, runs.model(r).state_dict()) for r, key in enumerate(self.my_keys)]
        gathered = gather_to_main(mine, self.dist)
        if not self.dist.is_main:
            return
        from .models import create_model

        model = create_model(self.cfg.model, num_classes=len(self.classes))
        for key, state in (item for part in gathered for item in part):
            model.load_state_dict(state)
            save_checkpoint(
                self.out / "checkpoints" / key.name / f"{stage}.safetensors",
                model,
                {"model": self.cfg.model, "init": key.init, "seed": key.seed, "stage": stage, "reproduce": self.cfg.to_dict()},
            )

    # ---- persistence --------------------------------------------------------------------
    def _collect(self, extra: Any = None) -> tuple[dict[str, list[torch.Tensor]], list[dict[str, Any]], list[tuple]] | None:
        """Every rank's tables (encoded chunks), shifts, run status and ``extra``, gathered to rank 0.

        Returns, on rank 0 only, each table's chunks from all ranks (rank by rank, in order), the
        shifts, and the per-rank parts ``(chunks, shifts, status, extra)``; None elsewhere.
        """
        from .distributed import gather_to_main

        mine = {k.name: self.status[k.name] for k in self.my_keys}
        parts = gather_to_main((self._chunks.update(self.tables), self.shifts, mine, extra), self.dist)
        if not self.dist.is_main:
            return None
        shifts: list[dict[str, Any]] = []
        for _, part_shifts, status, _ in parts:
            shifts.extend(part_shifts)
            self.status.update(status)
        tables = {name: [c for chunks, *_ in parts for c in chunks[name]] for name in TABLE_COLUMNS}
        return tables, shifts, parts

    def _write_tables(self, tables: dict[str, list[torch.Tensor]], shifts: list[dict[str, Any]]) -> None:
        # Rows are ordered by stage (or step), then by the run's place in the config, so the
        # tables are the same whatever the number of processes.
        run_index = {(k.init, k.seed): i for i, k in enumerate(self.keys)}
        stage_rank = {"before": -1, "after": 10**9}

        def ordered(df: pd.DataFrame, first: str | None) -> pd.DataFrame:
            if df.empty:
                return df
            keys = pd.DataFrame({"run": [run_index.get((i, s), -1) for i, s in zip(df["init"], df["seed"])]}, index=df.index)
            if first == "stage":
                keys["first"] = [stage_rank.get(v, int(v.split("_")[1]) if v.startswith("epoch_") else 0) for v in df["stage"]]
            elif first is not None:
                keys["first"] = df[first].to_numpy()
            order = keys.sort_values(["first", "run"] if first else ["run"], kind="stable").index
            return df.loc[order].reset_index(drop=True)

        files = {
            "loss.parquet": ("loss", "step"),
            "accuracy.parquet": ("accuracy", "epoch"),
            "weights.parquet": ("weights", "stage"),
            "features.parquet": ("features", "stage"),
            "histograms.parquet": ("histograms", "stage"),
        }
        for name, (table, first) in files.items():
            chunks = tables[table]
            # Tables only grow, a chunk per save that added rows: same chunk count, same table.
            if self._written.get(name) == len(chunks):
                continue
            self._written[name] = len(chunks)
            df = _decode_chunks(chunks, TABLE_COLUMNS[table])
            if len(df.columns):
                write_parquet(self.out / name, ordered(df, first))
        if shifts:
            write_parquet(self.out / "shifts.parquet", ordered(pd.DataFrame(shifts), None))

    def _save_state(self, runs: RunSet | None, opt: torch.optim.Optimizer | None, epoch: int, step_in_epoch: int, global_step: int) -> None:
        """Rank 0 saves every rank's training state in one file, then the tables so far."""
        mine = {
            "runs": runs.state_dict() if runs is not None else None,
            "optimizer": opt.state_dict() if opt is not None else None,
            "before": [[list(k), to_saveable(v.state_dict())] for k, v in self.before.items()],
            "epoch_acc": to_saveable(self._epoch_acc),
        }
        collected = self._collect(mine)
        if collected is None:
            return
        tables, shifts, parts = collected
        # Each rank's own tables (encoded chunks) and run status travel with its state, for --resume.
        ranks = [dict(extra, tables=chunks, status=json.dumps(status)) for chunks, _, status, extra in parts]
        state = {
            "version": STATE_VERSION,
            "config": json.dumps(self.cfg.to_dict()),
            "world": self.dist.world,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "ranks": ranks,
            "timings": json.dumps(self.timings),
        }
        with atomic_path(self.out / STATE_FILE) as tmp:
            torch.save(state, tmp)
        self._write_tables(tables, shifts)
        write_json(self.out / "manifest.json", self._manifest())

    def _load_state(self, runs: RunSet | None, opt: torch.optim.Optimizer | None) -> tuple[int, int, int]:
        from .distributed import broadcast_from_main

        error, state = None, None
        if self.dist.is_main:
            path = self.out / STATE_FILE
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable state is one user-facing error
                error = f"cannot read training state {path} ({type(exc).__name__}); start again with --overwrite"
            if state is not None and state.get("version") not in (2, STATE_VERSION):
                error = f"training state {path} was written by another nndist version; start again with --overwrite"
                state = None
            if state is not None:
                saved = json.loads(state["config"])
                if saved != self.cfg.to_dict():
                    diff = sorted(k for k in saved if saved.get(k) != self.cfg.to_dict().get(k))
                    error = f"--resume {self.out}: options differ from the interrupted run ({', '.join(diff)}); resume with the same options"
                elif state.get("world", 1) != self.dist.world:
                    error = f"--resume {self.out}: the run used {state.get('world', 1)} processes; resume it with the same number (torchrun --nproc-per-node)"
        error = broadcast_from_main(error, self.dist)
        if error:
            raise NndistError(error)
        state = broadcast_from_main(state, self.dist)
        mine = state["ranks"][self.dist.rank]
        if runs is not None:
            runs.load_state_dict(mine["runs"])
            load_optimizer_state(opt, mine["optimizer"], runs)
        if state["version"] >= 3:  # encoded chunks
            rows = {name: _decode_chunks(mine["tables"][name], cols).to_dict("records") for name, cols in TABLE_COLUMNS.items()}
        else:  # version 2: the rows themselves
            rows = from_saved(mine["tables"])
        self.tables = _Tables(**rows)
        self.before = {tuple(k): Summary.from_state_dict(from_saved(v)) for k, v in mine["before"]}
        self.status.update(json.loads(mine["status"]))
        self.timings = json.loads(state["timings"])
        self._epoch_acc = from_saved(mine["epoch_acc"])
        return int(state["epoch"]), int(state["step_in_epoch"]), int(state["global_step"])

    # ---- main loop ----------------------------------------------------------------------
    def run(self, *, overwrite: bool = False, resume: bool = False, report: bool = True) -> Path:
        from tqdm.auto import tqdm

        from .distributed import barrier, broadcast_from_main, rank_device, setup

        cfg = self.cfg
        self.dist = setup(cfg.device)
        self.device = resolve_device(rank_device(cfg.device, self.dist))
        # Inits (and seeds) are spread over the ranks; every rank sees the same batches.
        self.my_keys = self.keys[self.dist.rank :: self.dist.world]
        main = self.dist.is_main
        self.progress = self.progress and main
        self.shifts: list[dict[str, Any]] = []
        self._epoch_acc: dict[str, Any] = {"correct": None, "seen": 0, "loss_sum": None}
        # Data, model, inits and layers are checked before the output directory is touched,
        # so a bad option leaves nothing behind.
        self._load_data()
        runs = self._build_runs()
        error, started = None, utc_now()
        if main:
            try:
                prepare_output_dir(self.out, overwrite=overwrite, resume=resume)
                if resume:
                    with open(self.out / "manifest.json", encoding="utf-8") as fh:
                        old = json.load(fh)
                    if old.get("kind") != "reproduce":
                        raise NndistError(f"--resume {self.out}: it is a {old.get('kind')!r} run, not a reproduce run")
                    started = old.get("started") or started
            except NndistError as exc:
                error = str(exc)
        error = broadcast_from_main(error, self.dist)
        if error:
            raise NndistError(error)
        self.started = broadcast_from_main(started, self.dist)
        opt = run_adam(runs, cfg.lr, cfg.weight_decay) if runs is not None else None
        n_train = self.x_train.shape[0]
        steps_per_epoch = (n_train + cfg.batch_size - 1) // cfg.batch_size

        start_epoch, start_step, global_step = 1, 0, 0
        has_state = broadcast_from_main(bool(resume and (self.out / STATE_FILE).is_file()), self.dist)
        if has_state:
            epoch_done, step_in_epoch, global_step = self._load_state(runs, opt)
            start_epoch, start_step = (epoch_done + 1, 0) if step_in_epoch == 0 else (epoch_done, step_in_epoch)
        else:
            if main:
                write_json(self.out / "manifest.json", self._manifest())
            self._measure(runs, "before")
            self._save_checkpoints(runs, "before")
            if runs is not None:
                acc_t, loss_t = evaluate_runs(runs, self.x_train, self.y_train, cfg.eval_batch_size)
                acc_v, loss_v = evaluate_runs(runs, self.x_valid, self.y_valid, cfg.eval_batch_size)
            for r, key in enumerate(self.my_keys):
                self.tables.accuracy.append(dict(init=key.init, seed=key.seed, epoch=0, split="train", accuracy=float(acc_t[r]), loss=float(loss_t[r])))
                self.tables.accuracy.append(dict(init=key.init, seed=key.seed, epoch=0, split="valid", accuracy=float(acc_v[r]), loss=float(loss_v[r])))
                self.status[key.name]["status"] = "running"
            self._save_state(runs, opt, 0, 0, 0)

        t_train = time.perf_counter()
        total_steps = cfg.epochs * steps_per_epoch
        bar = tqdm(total=total_steps, initial=global_step, desc="training", unit="step", disable=not self.progress)
        R = len(self.my_keys)
        try:
            for epoch in range(start_epoch, cfg.epochs + 1):
                order = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)).to(self.device)
                first = start_step if epoch == start_epoch else 0
                if first == 0:
                    self._epoch_acc = {"correct": np.zeros(R), "seen": 0, "loss_sum": np.zeros(R)}
                for step in range(first, steps_per_epoch):
                    if runs is not None:
                        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                        self._train_step(runs, opt, self.x_train[idx], self.y_train[idx], epoch, global_step)
                    global_step += 1
                    bar.update(1)
                    if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                        self._save_state(runs, opt, epoch, step + 1, global_step)
                self._end_epoch(runs, epoch)
                self._save_state(runs, opt, epoch, 0, global_step)
        finally:
            bar.close()
        self.timings["train"] = self.timings.get("train", 0.0) + time.perf_counter() - t_train

        self._measure(runs, "after")
        self._save_checkpoints(runs, "after")
        for key in self.my_keys:
            if self.status[key.name]["status"] == "running":
                self.status[key.name]["status"] = "done"
        collected = self._collect()
        if main:
            self._write_tables(*collected[:2])
            if report:
                self._finish()
            write_json(self.out / "manifest.json", self._manifest(finished=True))
        barrier(self.dist)
        return self.out

    def _train_step(self, runs: RunSet, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor, epoch: int, global_step: int) -> None:
        """One Adam step of every run on the batch; a run whose loss is not finite is frozen."""
        loss, out, newly = runs.step(opt, xb, yb)
        for r in newly:
            st = self.status[self.my_keys[r].name]
            st["status"], st["diverged_at_step"] = "diverged", global_step
        loss_cpu = loss.detach().double().cpu().numpy()
        for r, key in enumerate(self.my_keys):
            if self.status[key.name]["status"] != "diverged" or r in newly:
                self.tables.loss.append(dict(init=key.init, seed=key.seed, epoch=epoch, step=global_step, loss=float(loss_cpu[r])))
        with torch.no_grad():
            self._epoch_acc["correct"] = self._epoch_acc["correct"] + (out.argmax(-1) == yb).sum(1).double().cpu().numpy()
        self._epoch_acc["loss_sum"] = self._epoch_acc["loss_sum"] + loss_cpu * xb.shape[0]
        self._epoch_acc["seen"] += xb.shape[0]

    def _end_epoch(self, runs: RunSet | None, epoch: int) -> None:
        if runs is not None:
            acc_v, loss_v = evaluate_runs(runs, self.x_valid, self.y_valid, self.cfg.eval_batch_size)
        seen = max(self._epoch_acc["seen"], 1)
        for r, key in enumerate(self.my_keys):
            # Training accuracy and loss are the running values over the epoch's batches.
            self.tables.accuracy.append(
                dict(init=key.init, seed=key.seed, epoch=epoch, split="train",
                     accuracy=float(self._epoch_acc["correct"][r] / seen), loss=float(self._epoch_acc["loss_sum"][r] / seen))
            )
            self.tables.accuracy.append(dict(init=key.init, seed=key.seed, epoch=epoch, split="valid", accuracy=float(acc_v[r]), loss=float(loss_v[r])))
        if self.cfg.every_epoch and epoch < self.cfg.epochs:
            self._measure(runs, f"epoch_{epoch}")

    def _finish(self) -> None:
        """Figures, TensorBoard events, claims and the report (rank 0 only)."""
        from .figures import write_figures

        t0 = time.perf_counter()
        write_figures(self.out)
        self.timings["figures"] = time.perf_counter() - t0
        write_json(self.out / "manifest.json", self._manifest(finished=True))
        finish_run_directory(self.out)


def run_reproduce(
    config: ReproduceConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    report: bool = True,
) -> Path:
    """Runs the initialisation study and writes its run directory.

    Args:
        config: the study's configuration (profile defaults are filled in).
        out_dir: the run directory.
        overwrite: replace a non-empty ``out_dir``.
        resume: continue an interrupted run in ``out_dir`` with the same options.
        progress: show progress bars.
        report: also draw the figures and write TensorBoard events, claims and the HTML report.

    Returns:
        The run directory.

    Raises:
        NndistError: on a bad option, data source, model or output directory.
    """
    return Study(config, out_dir, progress=progress).run(overwrite=overwrite, resume=resume, report=report)
