"""Channel-wise gradient statistics over a whole dataset (paper section 2.2, Experiment 2).

``run_gradients(config, out_dir)`` streams the selected samples through
:func:`nndist.probes.gradients.emission_absorption` batch by batch and keeps, per layer, mergeable
per-channel summaries of Emission and Absorption, the running sum of the channel-to-channel
norm matrix, and (unless disabled) the per-sample values in memory-mapped arrays on disk.
Memory therefore stays bounded whatever the number of samples. Progress is saved after every
chunk, so a killed run continues with ``resume=True`` from the last completed chunk. Under
``torchrun`` batch j goes to rank j mod N and the summaries are merged on rank 0
(:func:`nndist.stats.merge_to_main`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import dist
from ..data import load_split, resolve_samples, stratified_subset
from ..errors import NndistError
from ..probes.gradients import check_layers, emission_absorption
from ..progress import progress_bar
from ..report import draw_figures, finish_run_directory
from ..results import RunWriter, layout, utc_now, versions
from ..results.state import pack_summaries, unpack_summaries
from ..stats import Summary, merge_to_main
from .gradient_config import (
    MATRIX_AUTO_LIMIT,
    GradientsConfig,
    chosen_layers,
    fingerprint,
    fit_to_data,
    measured_model,
    model_name,
    model_spec,
    select_names,
)
from .options import study_config, study_device

__all__ = ["GradientStudy", "GradientsConfig", "run_gradients"]

STATS = ("emission", "absorption")
STATE_VERSION = 3  # 3: summaries packed (2: as state dicts; still read)
STATE_VERSIONS = (2, 3)


class GradientStudy:
    """One ``gradients`` run; see :func:`run_gradients`.

    The data, the model and its layers are loaded and checked here, before the output directory
    is touched; every piece of state the run updates is declared here too.
    """

    def __init__(self, config: GradientsConfig, out_dir: str | Path, *, progress: bool = True) -> None:
        config.check()
        self.cfg = cfg = config
        self.writer = RunWriter(out_dir, layout.GRADIENTS)
        self.dist = dist.setup(cfg.device)
        self.device = study_device(cfg.device, self.dist)
        self.progress = progress
        self.started = utc_now()
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        # Names first (model, layers), then the data: a bad name never waits for a download.
        spec = model_spec(cfg)
        model, self.notices = measured_model(cfg)
        check_layers(model, chosen_layers(cfg, model))
        self.data = load_split(cfg.data, cfg.split, image_size=cfg.image_size, resize=spec.resize if spec else "cifar",
                               skip_bad_images=cfg.skip_bad_images, progress=progress)
        n = resolve_samples(cfg.samples, len(self.data.labels), option="--samples", what=f"the {cfg.split} split of {cfg.data}")
        self.indices = stratified_subset(self.data.labels, "all" if cfg.samples == "all" else n, seed=cfg.seed)
        model, notes = fit_to_data(model, cfg, max(len(self.data.classes), 1))
        self.notices += notes
        if cfg.mean is not None and cfg.std is not None:
            self.mean, self.std = tuple(cfg.mean), tuple(cfg.std)
        elif spec is not None:
            self.mean, self.std = spec.mean, spec.std
        else:
            self.mean, self.std = self.data.pixel_statistics(self.indices)
            self.notices.append("normalised with the data's own per-channel mean and std (of the selected images; pass mean= and std= to choose)")
        # A user's own module gets its train/eval flags back when the run ends.
        self._modes = [(m, m.training) for m in model.modules()] if isinstance(cfg.model, nn.Module) else []
        self.model = model.to(self.device).eval()
        self.fingerprint = fingerprint(self.model)
        self.layers, self.unsupported, self.no_local_gradient = self._probe_layers()
        self.matrices = select_names(cfg.channel_matrices, list(self.layers), what="channel_matrices",
                                     auto=lambda name: self.layers[name]["c_out"] * self.layers[name]["c_in"] <= MATRIX_AUTO_LIMIT)
        self.timings["setup"] = time.perf_counter() - t0
        self.summaries: dict[tuple[str, str], Summary] = {}
        self.norm_sum: dict[str, np.ndarray] = {}
        self.done = 0  # batches completed (all ranks)
        self.totals_maxrel = 0.0
        self.arrays: dict[tuple[str, str], np.ndarray] = {}
        self._fresh_state()
        if self.progress and self.dist.is_main:
            for note in self.notices:
                print(f"nndist gradients: note: {note}", file=sys.stderr)

    def _measure_batch(self, x: torch.Tensor, y: torch.Tensor, layers: Any) -> Any:
        cfg = self.cfg
        targets = y if cfg.loss == "cross_entropy" else None
        return emission_absorption(self.model, x, targets, loss=cfg.loss, layers=layers, definition=cfg.definition)

    def _probe_layers(self) -> tuple[dict[str, dict[str, Any]], dict[str, str], dict[str, str]]:
        """One probe batch tells which layers are handled and their channel counts."""
        probe = self._measure_batch(*self._batch(self.indices[:2]), chosen_layers(self.cfg, self.model))
        modules = dict(self.model.named_modules())
        layers = {name: {"type": type(modules[name]).__name__ if name in modules else "projection",
                         "c_out": int(r.norm_sum.shape[0]), "c_in": int(r.norm_sum.shape[1]),
                         "channels": {"emission": int(r.emission.shape[1]), "absorption": int(r.absorption.shape[1])}}
                  for name, r in probe.items()}
        unsupported = dict(getattr(probe, "unsupported", {}))
        if not layers:
            raise NndistError(f"model {model_name(self.cfg.model)} has no layer with a channel-to-channel map to measure (unsupported: {unsupported})")
        return layers, unsupported, dict(getattr(probe, "no_local_gradient", {}))

    def _batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.data.normalized(self.mean, self.std, indices=idx, device=self.device)
        return x, self.data.labels[idx].to(self.device)

    def _fresh_state(self) -> None:
        ra = self.cfg.relative_accuracy
        self.summaries = {
            (name, stat): Summary(channels=info["channels"][stat], relative_accuracy=ra)
            for name, info in self.layers.items()
            for stat in STATS
        }
        self.norm_sum = {name: np.zeros((self.layers[name]["c_out"], self.layers[name]["c_in"])) for name in self.matrices}
        self.totals_maxrel = 0.0

    # ------------------------------------------------------------------ the run
    def run(self, *, overwrite: bool = False, resume: bool = False, report: bool = True, keep_state: bool = False) -> Path:
        """Measures every batch and writes the run directory; returns it."""
        main = self.dist.is_main
        error = None
        if main:
            try:
                old = self.writer.prepare(overwrite=overwrite, resume=resume)
                self.started = (old or {}).get("started") or self.started
            except NndistError as exc:
                error = str(exc)
        try:
            dist.raise_on_every_rank(error, self.dist)
            resumed = bool(resume and main and self._load_state())
            self.done = int(dist.broadcast_from_main(self.done, self.dist))
            if main:
                self._open_arrays(create=not resumed)
                self.writer.write_manifest(self._manifest(False))
            t1 = time.perf_counter()
            self._measure_all()
            self.timings["measure"] = time.perf_counter() - t1
            self.timings["samples_per_s"] = (len(self.indices) / self.timings["measure"]) if self.timings["measure"] > 0 else float("nan")
            if main:
                self._write_outputs()
                self.writer.write_manifest(self._manifest(True))
                self.writer.commit()
                if report:
                    t0 = time.perf_counter()
                    draw_figures(self.out)
                    finish_run_directory(self.out)
                    self.timings["report"] = time.perf_counter() - t0
                    self.writer.write_manifest(self._manifest(True))
                if not keep_state:
                    self.writer.remove_state()
            dist.barrier(self.dist)
        finally:
            self.writer.release()
            for module, training in self._modes:
                module.training = training
        return self.out

    @property
    def out(self) -> Path:
        """The run directory (until an ``--overwrite`` run finishes, the staging folder it writes to)."""
        return self.writer.path

    def _measure_all(self) -> None:
        main = self.dist.is_main
        n, bs, world = len(self.indices), self.cfg.batch_size, self.dist.world
        n_batches = (n + bs - 1) // bs
        # Batch j goes to rank j % world: every sample is computed in the same batch as in a
        # single process, so per-sample values are identical whatever the number of ranks.
        chunk = max(1, self.cfg.chunk_batches // world) * world
        bar = progress_bar(n, "emission/absorption", "img", enabled=self.progress and main, initial=min(n, self.done * bs))
        try:
            while self.done < n_batches:
                chunk_end = min(n_batches, self.done + chunk)
                for first in range(self.done, chunk_end, world):
                    mine = first + self.dist.rank
                    payload = (mine, self._process(mine)) if mine < chunk_end else None
                    gathered = dist.gather_to_main(payload, self.dist)
                    if gathered is not None:
                        for item in gathered:
                            if item is not None and item[1] is not None:
                                self._write_rows(*item)
                        bar.update(min(n, chunk_end * bs, (first + world) * bs) - min(n, first * bs))
                self._merge_to_main()
                self.done = chunk_end
                if main:
                    self._save_state()
                dist.barrier(self.dist)
        finally:
            bar.close()

    def _process(self, batch: int) -> dict[tuple[str, str], np.ndarray] | None:
        """Measures global batch ``batch``; updates this rank's summaries; returns per-sample values."""
        cfg = self.cfg
        start, stop = batch * cfg.batch_size, min(len(self.indices), (batch + 1) * cfg.batch_size)
        x, y = self._batch(self.indices[start:stop])
        res = self._measure_batch(x, y, list(self.layers))
        per_sample: dict[tuple[str, str], np.ndarray] = {}
        for name, r in res.items():
            em = r.emission.detach().to("cpu", torch.float64)
            ab = r.absorption.detach().to("cpu", torch.float64)
            self.summaries[(name, "emission")].update(em)
            self.summaries[(name, "absorption")].update(ab)
            if name in self.norm_sum:
                self.norm_sum[name] += r.norm_sum.detach().to("cpu", torch.float64).numpy()
            tot_em, tot_ab = em.sum(1), ab.sum(1)
            finite = torch.isfinite(tot_em) & torch.isfinite(tot_ab)
            if cfg.definition == "paper" and finite.any():  # the identity of the paper's definition
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
        """Merges every rank's partial state into rank 0's; the other ranks start the next chunk empty."""
        if not self.dist.enabled:
            return
        keys = list(self.summaries)
        merged = merge_to_main([self.summaries[k] for k in keys])
        others = dist.gather_to_main({"norm_sum": self.norm_sum, "maxrel": self.totals_maxrel}, self.dist)
        if merged is not None and others is not None:
            self.summaries = dict(zip(keys, merged))
            for other in others[1:]:
                for k, m in other["norm_sum"].items():
                    self.norm_sum[k] += m
                self.totals_maxrel = max(self.totals_maxrel, other["maxrel"])
        else:
            self._fresh_state()

    # ------------------------------------------------------------------ persistence
    def _open_arrays(self, create: bool) -> None:
        self.arrays = {}
        if not self.cfg.per_sample:
            return
        for name, info in self.layers.items():
            for stat in STATS:
                c = info["channels"][stat]
                self.arrays[(name, stat)] = self.writer.per_sample_array(name, stat, (len(self.indices), c), create=create)

    def _save_state(self) -> None:
        for arr in self.arrays.values():
            arr.flush()
        self.writer.save_state({
            "version": STATE_VERSION,
            "config": json.dumps(self.cfg.to_dict()),
            "done": self.done,
            "fingerprint": self.fingerprint,
            "summaries": pack_summaries(self.summaries),
            "norm_sum": {k: torch.from_numpy(v) for k, v in self.norm_sum.items()},
            "totals_maxrel": self.totals_maxrel,
        })

    def _load_state(self) -> bool:
        state = self.writer.load_state(STATE_VERSIONS)
        if state is None:
            return False
        if json.loads(state["config"]) != self.cfg.to_dict():
            raise NndistError(f"--resume {self.out}: options differ from the interrupted run; resume with the same options")
        if state.get("fingerprint", self.fingerprint) != self.fingerprint:
            raise NndistError(f"--resume {self.out}: the model is not the one the run started with (its parameters differ); "
                              "resume with the same model and weights, or start again with --overwrite")
        self.summaries = unpack_summaries(state["summaries"])
        self.norm_sum = {k: v.numpy().copy() for k, v in state["norm_sum"].items()}
        self.done = int(state["done"])
        self.totals_maxrel = float(state["totals_maxrel"])
        return True

    def _manifest(self, finished: bool) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "versions": versions(),
            "model": model_name(self.cfg.model),
            "random_weights": self.cfg.weights is None and isinstance(self.cfg.model, str),
            "model_fingerprint": self.fingerprint,
            "notices": self.notices,
            "device": str(self.device),
            "normalisation": {"mean": list(self.mean), "std": list(self.std)},
            "layers": self.layers,
            "unsupported": self.unsupported,
            "no_local_gradient": self.no_local_gradient,
            "channel_matrices": self.matrices,
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

    def _write_outputs(self) -> None:
        rows = [dict(layer=name, channel=channel, stat=stat, **row)
                for (name, stat), s in self.summaries.items() for channel, row in enumerate(s.rows())]
        self.writer.write_table("gradients", pd.DataFrame(rows))
        for (name, stat), arr in self.arrays.items():
            arr.flush()
            self.writer.publish_per_sample(name, stat)
        self.arrays = {}
        if self.cfg.per_sample:
            self.writer.write_array(layout.PER_SAMPLE_ORDER, np.asarray(self.indices, dtype=np.int64))
        n = max(len(self.indices), 1)
        self.writer.write_arrays(layout.CHANNEL_NORMS, {name: (m / n).astype(np.float32) for name, m in self.norm_sum.items()}, compressed=True)


def run_gradients(
    config: GradientsConfig | None,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    report: bool = True,
    keep_state: bool = False,
) -> Path:
    """Measures per-channel Emission and Absorption over a dataset and writes a run directory.

    Args:
        config: what to measure (model, weights, data, samples, layers...); None with
            ``resume=True`` reads it from the run's manifest.
        out_dir: the run directory (see docs/CONTRACTS.md for its files).
        overwrite: replace a non-empty ``out_dir``.
        resume: continue an interrupted run from its last completed chunk.
        progress: show a progress bar with samples/s.
        report: also draw the figures and write TensorBoard events, claims and the HTML report.
        keep_state: keep the resume state (``state/``) of the completed run (default: delete it).

    Returns:
        The run directory.
    """
    config = study_config(GradientsConfig, config, out_dir, resume=resume, kind=layout.GRADIENTS)
    return GradientStudy(config, out_dir, progress=progress).run(overwrite=overwrite, resume=resume, report=report, keep_state=keep_state)
