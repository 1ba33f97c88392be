"""Channel-wise gradient statistics over a whole dataset (paper section 2.2, Experiment 2).

``run_gradients(config, out_dir)`` streams the selected samples through
:func:`nndist.gradients.emission_absorption` batch by batch and keeps, per layer, mergeable
per-channel summaries of Emission and Absorption, the running sum of the channel-to-channel
norm matrix, and (unless disabled) the per-sample values in memory-mapped arrays on disk.
Memory therefore stays bounded whatever the number of samples. Progress is saved after every
chunk, so a killed run continues with ``resume=True`` from the last completed chunk.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .errors import NndistError
from .figures_gradients import layer_file_stem
from .io import atomic_path, write_json, write_parquet
from .rundir import finish_run_directory, from_saved, prepare_output_dir, resolve_device, to_saveable, utc_now, versions
from .stats import Summary

STATS = ("emission", "absorption")
STATE_FILE = "state/gradients.pt"


@dataclass
class GradientsConfig:
    """Configuration of a ``gradients`` run (saved in the manifest).

    Attributes:
        model: registered model name (``cifar_resnet20``, ``torchvision:resnet50``, ``paper_cnn``...).
        weights: checkpoint path or torchvision weights name (None: random initialisation).
        data: ``cifar10``, ``shapes`` or an image folder path.
        split: ``train`` or ``test``.
        samples: number of samples (int or ``"all"``), a class-stratified subset.
        batch_size: samples per batch.
        layers: module names (None: every Conv2d and Linear).
        loss: ``cross_entropy`` or ``logit``.
        per_sample: keep per-sample values as memory-mapped arrays.
        seed: subset seed.
        device: ``cpu``, ``cuda`` or ``auto``.
        relative_accuracy: quantile-sketch accuracy of the per-channel summaries.
        chunk_batches: batches per saved chunk (the resume granularity).
        skip_bad_images: skip unreadable images (listed in the manifest).
    """

    model: str = "cifar_resnet20"
    weights: str | None = None
    data: str = "cifar10"
    split: str = "test"
    samples: int | str = "all"
    batch_size: int = 128
    layers: tuple[str, ...] | None = None
    loss: str = "cross_entropy"
    per_sample: bool = True
    seed: int = 0
    device: str = "auto"
    relative_accuracy: float = 0.01
    chunk_batches: int = 20
    skip_bad_images: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d




class GradientStudy:
    """One ``gradients`` run; see :func:`run_gradients`."""

    def __init__(self, config: GradientsConfig, out_dir: str | Path, *, progress: bool = True) -> None:
        if config.split not in ("train", "test"):
            raise NndistError(f"--split must be train or test, got {config.split!r}")
        if config.loss not in ("cross_entropy", "logit"):
            raise NndistError(f"--loss must be cross_entropy or logit, got {config.loss!r}")
        if config.batch_size < 1:
            raise NndistError(f"--batch-size must be a positive integer, got {config.batch_size}")
        self.cfg = config
        self.out = Path(out_dir)
        self.progress = progress

    def _setup(self) -> None:
        from .data import load_split, stratified_subset
        from .gradients import emission_absorption
        from .models import create_model, get_model_spec, load_weights

        cfg = self.cfg
        spec = get_model_spec(cfg.model)
        torchvision_model = cfg.model.startswith("torchvision:")
        data = load_split(
            cfg.data, cfg.split, resize="imagenet" if torchvision_model else "cifar",
            skip_bad_images=cfg.skip_bad_images, progress=self.progress,
        )
        if cfg.samples != "all" and cfg.samples > len(data.labels):
            raise NndistError(
                f"--samples {cfg.samples}: the {cfg.split} split of {cfg.data} has {len(data.labels)} images; "
                f"pass a number from 1 to {len(data.labels)}, or 'all'"
            )
        self.indices = stratified_subset(data.labels, cfg.samples, seed=cfg.seed)
        self.data = data
        self.mean, self.std = spec.mean, spec.std
        if torchvision_model:
            model = create_model(cfg.model, weights=cfg.weights)
        else:
            model = create_model(cfg.model, num_classes=max(len(data.classes), 1))
            if cfg.weights is not None:
                load_weights(model, cfg.weights)
        self.model = model.to(self.device).eval()
        # One probe batch tells which layers are handled and their channel counts.
        probe_x = data.normalized(self.mean, self.std, indices=self.indices[:2], device=self.device)
        probe_y = data.labels[self.indices[:2]].to(self.device)
        probe = emission_absorption(self.model, probe_x, probe_y if cfg.loss == "cross_entropy" else None, loss=cfg.loss, layers=cfg.layers)
        self.layers = {
            name: {"type": type(dict(self.model.named_modules())[name]).__name__, "c_out": int(r.emission.shape[1]), "c_in": int(r.absorption.shape[1])}
            for name, r in probe.items()
        }
        self.unsupported = dict(getattr(probe, "unsupported", {}))
        if not self.layers:
            raise NndistError(f"model {cfg.model} has no Conv2d or Linear layer to measure (unsupported: {self.unsupported})")

    def _fresh_state(self) -> None:
        ra = self.cfg.relative_accuracy
        self.summaries = {
            (name, stat): Summary(channels=info["c_out" if stat == "emission" else "c_in"], relative_accuracy=ra)
            for name, info in self.layers.items()
            for stat in STATS
        }
        self.norm_sum = {name: np.zeros((info["c_out"], info["c_in"])) for name, info in self.layers.items()}
        self.done = 0
        self.totals_maxrel = 0.0

    def _per_sample_path(self, layer: str, stat: str, tmp: bool = True) -> Path:
        name = f"{layer_file_stem(layer)}.{stat}.npy"
        return self.out / "per_sample" / (f".{name}.partial" if tmp else name)

    def _open_arrays(self, create: bool) -> None:
        self.arrays = {}
        if not self.cfg.per_sample:
            return
        n = len(self.indices)
        for name, info in self.layers.items():
            for stat in STATS:
                c = info["c_out" if stat == "emission" else "c_in"]
                path = self._per_sample_path(name, stat)
                path.parent.mkdir(parents=True, exist_ok=True)
                if create or not path.exists():
                    self.arrays[(name, stat)] = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, c))
                else:
                    self.arrays[(name, stat)] = np.load(path, mmap_mode="r+")

    def _save_state(self) -> None:
        for arr in self.arrays.values():
            arr.flush()
        state = {
            "version": 2,
            "config": json.dumps(self.cfg.to_dict()),
            "done": self.done,
            "summaries": [[list(k), to_saveable(s.state_dict())] for k, s in self.summaries.items()],
            "norm_sum": {k: torch.from_numpy(v) for k, v in self.norm_sum.items()},
            "totals_maxrel": self.totals_maxrel,
        }
        with atomic_path(self.out / STATE_FILE) as tmp:
            torch.save(state, tmp)

    def _load_state(self) -> bool:
        path = self.out / STATE_FILE
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise NndistError(f"cannot read gradients state {path} ({type(exc).__name__}); start again with --overwrite") from None
        if state.get("version") != 2:
            raise NndistError(f"gradients state {path} was written by another nndist version; start again with --overwrite")
        if json.loads(state["config"]) != self.cfg.to_dict():
            raise NndistError(f"--resume {self.out}: options differ from the interrupted run; resume with the same options")
        self.summaries = {tuple(k): Summary.from_state_dict(from_saved(v)) for k, v in state["summaries"]}
        self.norm_sum = {k: v.numpy().copy() for k, v in state["norm_sum"].items()}
        self.done = int(state["done"])
        self.totals_maxrel = float(state["totals_maxrel"])
        return True

    def _manifest(self, finished: bool) -> dict[str, Any]:
        return {
            "kind": "gradients",
            "config": self.cfg.to_dict(),
            "versions": versions(),
            "model": self.cfg.model,
            "device": str(self.device),
            "normalisation": {"mean": list(self.mean), "std": list(self.std)},
            "layers": self.layers,
            "unsupported": self.unsupported,
            "n_samples": len(self.indices),
            "done_samples": min(len(self.indices), self.done * self.cfg.batch_size),
            "sample_order": [int(i) for i in self.indices],
            "classes": list(self.data.classes),
            "bad_files": [str(f) for f in self.data.bad_files],
            "identity_max_rel_diff": self.totals_maxrel,
            "timings": self.timings,
            "started": self.started,
            "finished": utc_now() if finished else None,
        }

    def _process(self, batch: int) -> dict[tuple[str, str], np.ndarray] | None:
        """Measures global batch ``batch``; updates this rank's summaries; returns per-sample values."""
        from .gradients import emission_absorption

        cfg = self.cfg
        start, stop = batch * cfg.batch_size, min(len(self.indices), (batch + 1) * cfg.batch_size)
        idx = self.indices[start:stop]
        x = self.data.normalized(self.mean, self.std, indices=idx, device=self.device)
        y = self.data.labels[idx].to(self.device)
        res = emission_absorption(self.model, x, y if cfg.loss == "cross_entropy" else None, loss=cfg.loss, layers=list(self.layers))
        per_sample: dict[tuple[str, str], np.ndarray] = {}
        for name, r in res.items():
            em = r.emission.detach().to("cpu", torch.float64)
            ab = r.absorption.detach().to("cpu", torch.float64)
            self.summaries[(name, "emission")].update(em)
            self.summaries[(name, "absorption")].update(ab)
            self.norm_sum[name] += r.norm_sum.detach().to("cpu", torch.float64).numpy()
            tot_em, tot_ab = em.sum(1), ab.sum(1)
            finite = torch.isfinite(tot_em) & torch.isfinite(tot_ab)
            if finite.any():
                rel = ((tot_em - tot_ab).abs() / tot_em.abs().clamp_min(1e-30))[finite].max().item()
                self.totals_maxrel = max(self.totals_maxrel, rel)
            if cfg.per_sample:
                per_sample[(name, "emission")] = r.emission.detach().to("cpu", torch.float32).numpy()
                per_sample[(name, "absorption")] = r.absorption.detach().to("cpu", torch.float32).numpy()
        return per_sample if cfg.per_sample else None

    def _write_rows(self, batch: int, values: dict[tuple[str, str], np.ndarray]) -> None:
        start = batch * self.cfg.batch_size
        for key, arr in values.items():
            self.arrays[key][start : start + arr.shape[0]] = arr

    def _merge_to_main(self) -> None:
        """Merges every rank's partial summaries into rank 0's (one gather); the others restart empty."""
        if not self.dist.enabled:
            return
        from .distributed import gather_to_main

        payload = {
            "summaries": {k: s.state_dict() for k, s in self.summaries.items()},
            "norm_sum": self.norm_sum,
            "maxrel": self.totals_maxrel,
        }
        gathered = gather_to_main(payload, self.dist)
        if self.dist.is_main:
            for other in gathered[1:]:
                for k, state in other["summaries"].items():
                    self.summaries[k].merge(Summary.from_state_dict(state))
                for k, m in other["norm_sum"].items():
                    self.norm_sum[k] += m
                self.totals_maxrel = max(self.totals_maxrel, other["maxrel"])
        else:
            done = self.done
            self._fresh_state()
            self.done = done

    def run(self, *, overwrite: bool = False, resume: bool = False, report: bool = True) -> Path:
        from tqdm.auto import tqdm

        from .distributed import barrier, broadcast_from_main, gather_to_main, rank_device, setup

        self.dist = setup(self.cfg.device)
        self.device = resolve_device(rank_device(self.cfg.device, self.dist))
        main = self.dist.is_main
        self.started = utc_now()
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        # Data, model and layers are checked before the output directory is touched.
        self._setup()
        self.timings["setup"] = time.perf_counter() - t0
        # Rank 0 checks the output directory; every rank raises the same error if it fails.
        error = None
        if main:
            try:
                prepare_output_dir(self.out, overwrite=overwrite, resume=resume)
            except NndistError as exc:
                error = str(exc)
        error = broadcast_from_main(error, self.dist)
        if error:
            raise NndistError(error)
        self._fresh_state()
        resumed = bool(resume and main and self._load_state())
        self.done = int(broadcast_from_main(self.done, self.dist))
        self.arrays = {}
        if main:
            self._open_arrays(create=not resumed)
            write_json(self.out / "manifest.json", self._manifest(False))
        n, bs, world = len(self.indices), self.cfg.batch_size, self.dist.world
        n_batches = (n + bs - 1) // bs
        # Batch j goes to rank j % world: every sample is computed in the same batch as in a
        # single process, so per-sample values are identical whatever the number of ranks.
        chunk = max(1, self.cfg.chunk_batches // world) * world
        t1 = time.perf_counter()
        bar = tqdm(total=n, initial=min(n, self.done * bs), desc="emission/absorption", unit="img", disable=not (self.progress and main))
        try:
            while self.done < n_batches:
                chunk_end = min(n_batches, self.done + chunk)
                for first in range(self.done, chunk_end, world):
                    mine = first + self.dist.rank
                    payload = (mine, self._process(mine)) if mine < chunk_end else None
                    gathered = gather_to_main(payload, self.dist)
                    if main:
                        for item in gathered:
                            if item is not None and item[1] is not None:
                                self._write_rows(*item)
                        bar.update(min(n, chunk_end * bs, (first + world) * bs) - min(n, first * bs))
                self._merge_to_main()
                self.done = chunk_end
                if main:
                    self._save_state()
                barrier(self.dist)
        finally:
            bar.close()
        self.timings["measure"] = time.perf_counter() - t1
        self.timings["samples_per_s"] = (n / self.timings["measure"]) if self.timings["measure"] > 0 else float("nan")
        if main:
            self._write_outputs(figures=report)
            if report:
                finish_run_directory(self.out)
            write_json(self.out / "manifest.json", self._manifest(True))
        barrier(self.dist)
        return self.out

    def _write_outputs(self, figures: bool = True) -> None:
        rows = []
        for (name, stat), s in self.summaries.items():
            for channel, row in enumerate(s.rows()):
                rows.append(dict(layer=name, channel=channel, stat=stat, **row))
        write_parquet(self.out / "gradients.parquet", pd.DataFrame(rows))
        for (name, stat), arr in self.arrays.items():
            arr.flush()
            self._per_sample_path(name, stat).replace(self._per_sample_path(name, stat, tmp=False))
        self.arrays = {}
        if self.cfg.per_sample:
            with atomic_path(self.out / "per_sample" / "order.npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, np.asarray(self.indices, dtype=np.int64))
        n = max(len(self.indices), 1)
        with atomic_path(self.out / "channel_norms.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{name: m / n for name, m in self.norm_sum.items()})
        if figures:
            from .figures_gradients import write_gradient_figures

            write_gradient_figures(self.out)


def run_gradients(
    config: GradientsConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    report: bool = True,
) -> Path:
    """Measures per-channel Emission and Absorption over a dataset and writes a run directory.

    Args:
        config: what to measure (model, weights, data, samples, layers...).
        out_dir: the run directory (see docs/CONTRACTS.md for its files).
        overwrite: replace a non-empty ``out_dir``.
        resume: continue an interrupted run from its last completed chunk.
        progress: show a progress bar with samples/s.
        report: also draw the figures and write TensorBoard events, claims and the HTML report.

    Returns:
        The run directory.
    """
    return GradientStudy(config, out_dir, progress=progress).run(overwrite=overwrite, resume=resume, report=report)
