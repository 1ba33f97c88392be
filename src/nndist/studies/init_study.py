"""The initialisation study of the paper (sections 2.1 and 3), end to end.

``run_reproduce(config, out_dir)`` trains the paper's CNN (or any registered model) from several
initialisation schemes on the same sequence of batches, measures the distributions of the studied
layers' weights, biases and features before and after training (and at every epoch with
``every_epoch``), and writes a run directory through :class:`~nndist.results.RunWriter`: tables
as Parquet, checkpoints as safetensors, figures, TensorBoard events, the paper's claims and an
HTML report.

Feature summaries are streamed over the whole selected split, batch by batch; no feature tensor
is kept. Training state is saved at every epoch end (and every ``checkpoint_every`` steps), so a
killed run continues with ``resume=True`` and ends with the same results as an uninterrupted one.
Under ``torchrun`` the runs are spread over the ranks and rank 0 writes every file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import dist
from ..errors import NndistError
from ..inits import INITS, init_model
from ..models import get_model_spec
from ..probes import layer_modules
from ..progress import progress_bar
from ..report import draw_figures, finish_run_directory
from ..results import RunWriter, layout, utc_now, versions
from ..results.state import TableChunks, decode_chunks, from_saved, pack_summaries, unpack_summaries
from ..stats import Summary, ks_distance, wasserstein
from ..stats.tables import feature_summaries, histogram_rows, summary_row, weight_summaries
from .init_config import ReproduceConfig, StudyData, build_run_model, factory_name, load_study_data
from .options import study_config, study_device
from .training import RunSet, evaluate_runs, load_optimizer_state, run_adam

__all__ = ["InitStudy", "ReproduceConfig", "run_reproduce"]

#: The tables this study appends rows to (and carries in its resume state).
TABLES = ("loss", "accuracy", "weights", "features", "histograms")
# 4: per-run model states and packed summaries; 3: tables as encoded Parquet chunks; 2: as rows.
STATE_VERSION = 4
STATE_VERSIONS = (2, 3, 4)


@dataclass(frozen=True)
class RunKey:
    """One training run: an init scheme and a seed index."""

    init: str
    seed: int

    @property
    def name(self) -> str:
        return layout.run_key(self.init, self.seed)


@dataclass
class Progress:
    """Where training stands and the running accuracy of the epoch in progress (this rank's runs)."""

    epoch: int = 0  # last epoch begun (0 before training)
    step_in_epoch: int = 0  # steps of that epoch done (0: the epoch is complete)
    global_step: int = 0
    correct: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seen: int = 0

    def new_epoch(self, runs: int) -> None:
        self.correct, self.loss_sum, self.seen = np.zeros(runs), np.zeros(runs), 0


def _bias_init(value: str | float | None) -> str | float | None:
    """``--bias-init``: a name (default, zeros, ones) or a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


class InitStudy:
    """One ``reproduce`` run; :meth:`run` does everything. See :func:`run_reproduce`.

    Everything the study holds is created here: the data and the models are loaded and checked
    before the output directory is touched, so a bad option leaves nothing behind.
    """

    def __init__(self, config: ReproduceConfig, out_dir: str | Path, *, progress: bool = True) -> None:
        self.cfg = config.resolve()
        self.writer = RunWriter(out_dir, layout.REPRODUCE)
        self.dist = dist.setup(self.cfg.device)
        self.device = study_device(self.cfg.device, self.dist)
        self.progress = progress and self.dist.is_main
        self.keys = [RunKey(init, s) for init in self.cfg.inits for s in range(self.cfg.seeds)]
        # Inits (and seeds) are spread over the ranks; every rank sees the same batches.
        self.my_keys = self.keys[self.dist.rank :: self.dist.world]
        self.run_order = {(k.init, k.seed): i for i, k in enumerate(self.keys)}
        self.tables: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}
        self.chunks = TableChunks(layout.REPRODUCE, TABLES)
        self.written: dict[str, int] = {}  # chunks behind each table file as last written (rank 0)
        self.before: dict[tuple, Summary] = {}
        self.shifts: list[dict[str, Any]] = []
        self.status = {k.name: {"init": k.init, "seed": k.seed, "status": "pending", "diverged_at_step": None} for k in self.keys}
        self.timings: dict[str, float] = {}
        self.started = utc_now()
        self.pos = Progress()
        self._check_names()  # before the data: a bad name never waits for a download
        self.data: StudyData = load_study_data(self.cfg, self.device, progress=self.progress)
        self.timings["load_data"] = self.data.seconds
        self.runs = self._build_runs()
        self.opt = run_adam(self.runs, self.cfg.lr, self.cfg.weight_decay) if self.runs is not None else None

    def _check_names(self) -> None:
        """Init schemes, the model and the studied layers, checked before anything is loaded."""
        for init in self.cfg.inits:
            INITS.get(init)  # an unknown scheme lists the valid ones
        if isinstance(self.cfg.model, str):
            get_model_spec(self.cfg.model)
        layer_modules(build_run_model(self.cfg, 10), self.cfg.layers)  # an unknown layer lists the valid ones

    def _build_runs(self) -> RunSet | None:
        """This rank's runs (None when it has none); checks the model against the data first."""
        cfg, classes = self.cfg, len(self.data.classes)
        probe = build_run_model(cfg, classes)
        try:
            with torch.no_grad():
                out = probe.eval()(self.data.x_train[:1].cpu())
        except NndistError as exc:
            raise NndistError(f"--data {cfg.data}: {exc}") from None
        except RuntimeError as exc:
            raise NndistError(
                f"model {factory_name(cfg.model)} cannot take inputs of shape {tuple(self.data.x_train.shape[1:])} from {cfg.data}: {str(exc).splitlines()[0]}"
            ) from None
        if out.shape[-1] != classes:
            raise NndistError(f"model {factory_name(cfg.model)} gives {out.shape[-1]} outputs but {cfg.data} has {classes} classes; "
                              "build the model for the data's classes")
        if not self.my_keys:
            return None
        models = []
        for key in self.my_keys:
            model = build_run_model(cfg, classes)
            init_model(model, key.init, gain=cfg.gain, bias_init=_bias_init(cfg.bias_init), generator=cfg.init_seed + key.seed)
            models.append(model)
        return RunSet(models).to(self.device)

    # ------------------------------------------------------------------ the run
    def run(self, *, overwrite: bool = False, resume: bool = False, report: bool = True, keep_state: bool = False) -> Path:
        """Trains, measures and writes the run directory; returns it."""
        error = None
        if self.dist.is_main:
            try:
                old = self.writer.prepare(overwrite=overwrite, resume=resume)
                self.started = (old or {}).get("started") or self.started
            except NndistError as exc:
                error = str(exc)
        try:
            dist.raise_on_every_rank(error, self.dist)
            self.started = dist.broadcast_from_main(self.started, self.dist)
            has_state = dist.broadcast_from_main(bool(resume and self.writer.state_path.is_file()), self.dist)
            if has_state:
                self._load_state()
            else:
                self._start()
            self._train()
            self._measure(layout.AFTER)
            self._save_checkpoints(layout.AFTER)
            for key in self.my_keys:
                if self.status[key.name]["status"] == "running":
                    self.status[key.name]["status"] = "done"
            collected = self._collect()
            if collected is not None:
                self._write_tables(*collected[:2])
                self.writer.write_manifest(self._manifest(finished=True))
                self.writer.commit()
                if report:
                    self._report()
                if not keep_state:
                    self.writer.remove_state()
            dist.barrier(self.dist)
        finally:
            self.writer.release()
        return self.out

    @property
    def out(self) -> Path:
        """The run directory (until an ``--overwrite`` run finishes, the staging folder it writes to)."""
        return self.writer.path

    def _report(self) -> None:
        """Figures, TensorBoard events, claims and the HTML report of the finished run."""
        t0 = time.perf_counter()
        draw_figures(self.out)
        self.timings["figures"] = time.perf_counter() - t0
        self.writer.write_manifest(self._manifest(finished=True))
        finish_run_directory(self.out)
        self.timings["report"] = time.perf_counter() - t0
        self.writer.write_manifest(self._manifest(finished=True))

    def _start(self) -> None:
        """Before training: the manifest, the 'before' distributions, checkpoints, epoch-0 accuracy."""
        if self.dist.is_main:
            self.writer.write_manifest(self._manifest())
        self._measure(layout.BEFORE)
        self._save_checkpoints(layout.BEFORE)
        if self.runs is not None:
            acc_t, loss_t = evaluate_runs(self.runs, self.data.x_train, self.data.y_train, self.cfg.eval_batch_size)
            acc_v, loss_v = evaluate_runs(self.runs, self.data.x_valid, self.data.y_valid, self.cfg.eval_batch_size)
            for r, key in enumerate(self.my_keys):
                self._accuracy(key, 0, "train", acc_t[r], loss_t[r])
                self._accuracy(key, 0, "valid", acc_v[r], loss_v[r])
                self.status[key.name]["status"] = "running"
        self._save_state()

    def _train(self) -> None:
        cfg, data = self.cfg, self.data
        n_train = data.x_train.shape[0]
        steps_per_epoch = (n_train + cfg.batch_size - 1) // cfg.batch_size
        first_epoch = self.pos.epoch + 1 if self.pos.step_in_epoch == 0 else self.pos.epoch
        t0 = time.perf_counter()
        bar = progress_bar(cfg.epochs * steps_per_epoch, "training", "step", enabled=self.progress, initial=self.pos.global_step)
        try:
            for epoch in range(first_epoch, cfg.epochs + 1):
                order = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)).to(self.device)
                if self.pos.step_in_epoch == 0:
                    self.pos.new_epoch(len(self.my_keys))
                self.pos.epoch = epoch
                t_epoch = time.perf_counter()
                for step in range(self.pos.step_in_epoch, steps_per_epoch):
                    if self.runs is not None:
                        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                        self._train_step(data.x_train[idx], data.y_train[idx], epoch)
                    self.pos.global_step += 1
                    self.pos.step_in_epoch = step + 1
                    bar.update(1)
                    if cfg.checkpoint_every and self.pos.global_step % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                        self._save_state()
                t_valid = time.perf_counter()
                self._end_epoch(epoch)
                self.pos.step_in_epoch = 0
                t_save = time.perf_counter()
                # Where each epoch's time goes (steps, validation, state save), to see a run slow down.
                self.timings.setdefault("epochs", []).append(
                    {"epoch": epoch, "steps_s": round(t_valid - t_epoch, 3), "validation_s": round(t_save - t_valid, 3)})
                self._save_state()
                self.timings["epochs"][-1]["save_s"] = round(time.perf_counter() - t_save, 3)
        finally:
            bar.close()
        self.timings["train"] = self.timings.get("train", 0.0) + time.perf_counter() - t0

    def _train_step(self, xb: torch.Tensor, yb: torch.Tensor, epoch: int) -> None:
        """One Adam step of every run on the batch; a run whose loss is not finite is frozen."""
        assert self.runs is not None and self.opt is not None
        loss, out, newly = self.runs.step(self.opt, xb, yb)
        step = self.pos.global_step
        for r in newly:
            self.status[self.my_keys[r].name].update(status="diverged", diverged_at_step=step)
        loss_cpu = loss.double().cpu().numpy()
        for r, key in enumerate(self.my_keys):
            if self.status[key.name]["status"] != "diverged" or r in newly:
                self.tables["loss"].append(dict(init=key.init, seed=key.seed, epoch=epoch, step=step, loss=float(loss_cpu[r])))
        self.pos.correct = self.pos.correct + (out.argmax(-1) == yb).sum(1).double().cpu().numpy()
        self.pos.loss_sum = self.pos.loss_sum + loss_cpu * xb.shape[0]
        self.pos.seen += xb.shape[0]

    def _accuracy(self, key: RunKey, epoch: int, split: str, accuracy: float, loss: float) -> None:
        self.tables["accuracy"].append(dict(init=key.init, seed=key.seed, epoch=epoch, split=split, accuracy=float(accuracy), loss=float(loss)))

    def _end_epoch(self, epoch: int) -> None:
        if self.runs is not None:
            acc_v, loss_v = evaluate_runs(self.runs, self.data.x_valid, self.data.y_valid, self.cfg.eval_batch_size)
        seen = max(self.pos.seen, 1)
        for r, key in enumerate(self.my_keys):
            # Training accuracy and loss are the running values over the epoch's batches.
            self._accuracy(key, epoch, "train", self.pos.correct[r] / seen, self.pos.loss_sum[r] / seen)
            self._accuracy(key, epoch, "valid", acc_v[r], loss_v[r])
        if self.cfg.every_epoch and epoch < self.cfg.epochs:
            self._measure(layout.epoch_stage(epoch))

    # ------------------------------------------------------------------ measurement
    def _measure(self, stage: str) -> None:
        t0 = time.perf_counter()
        inputs = self.data.inputs()
        total = len(self.my_keys) * sum(x.shape[0] for x in inputs.values())
        bar = progress_bar(total, f"features {stage}", "img", enabled=self.progress, leave=False)
        try:
            for r, key in enumerate(self.my_keys):
                model = self.runs.model(r)  # type: ignore[union-attr]
                for (layer, pname), s in weight_summaries(model, self.cfg.layers).items():
                    self._record("weights", key, stage, s, layer=layer, param=pname, input="")
                feats = feature_summaries(model, self.cfg.layers, inputs, batch_size=self.cfg.eval_batch_size, progress=bar.update)
                for (layer, input_type), s in feats.items():
                    self._record("features", key, stage, s, layer=layer, param="", input=input_type)
        finally:
            bar.close()
        self.timings[f"measure_{stage}"] = time.perf_counter() - t0

    def _record(self, table: str, key: RunKey, stage: str, s: Summary, *, layer: str, param: str, input: str) -> None:
        """A summary's table row and histogram rows; its before -> after shift at the 'after' stage."""
        what = {"param": param} if table == "weights" else {"input": input}
        keys = dict(init=key.init, seed=key.seed, layer=layer, **what, stage=stage)
        self.tables[table].append(summary_row(s, keys))
        self.tables["histograms"].extend(histogram_rows(s, dict(keys, table=table, param=param, input=input)))
        skey = (table, key.name, layer, param or input)
        if stage == layout.BEFORE:
            self.before[skey] = s
        elif stage == layout.AFTER and skey in self.before:
            before = self.before[skey]
            self.shifts.append(dict(table=table, init=key.init, seed=key.seed, layer=layer, param=param, input=input,
                                    wasserstein=float(wasserstein(before, s)), ks=float(ks_distance(before, s))))

    def _save_checkpoints(self, stage: str) -> None:
        """Rank 0 writes every run's checkpoint (the others send theirs)."""
        mine = [(key, self.runs.model(r).state_dict()) for r, key in enumerate(self.my_keys)]  # type: ignore[union-attr]
        gathered = dist.gather_to_main(mine, self.dist)
        if gathered is None:
            return
        model = build_run_model(self.cfg, len(self.data.classes))
        name = factory_name(self.cfg.model)
        for key, state in (item for part in gathered for item in part):
            model.load_state_dict(state)
            self.writer.write_checkpoint(key.name, stage, model, {"model": name, "init": key.init, "seed": key.seed,
                                                                  "stage": stage, "reproduce": self.cfg.to_dict()})

    # ------------------------------------------------------------------ persistence
    def _collect(self, extra: Any = None) -> tuple[dict[str, list[torch.Tensor]], list[dict[str, Any]], list[tuple]] | None:
        """Every rank's tables (encoded chunks), shifts, run status and ``extra``, gathered to rank 0.

        Returns, on rank 0 only, each table's chunks from all ranks (rank by rank, in order), the
        shifts, and the per-rank parts ``(chunks, shifts, status, extra)``; None elsewhere.
        """
        mine = {k.name: self.status[k.name] for k in self.my_keys}
        parts = dist.gather_to_main((self.chunks.update(self.tables), self.shifts, mine, extra), self.dist)
        if parts is None:
            return None
        shifts: list[dict[str, Any]] = []
        for _, part_shifts, status, _ in parts:
            shifts.extend(part_shifts)
            self.status.update(status)
        tables = {name: [c for chunks, *_ in parts for c in chunks[name]] for name in TABLES}
        return tables, shifts, parts

    def _write_tables(self, tables: dict[str, list[torch.Tensor]], shifts: list[dict[str, Any]]) -> None:
        for name, chunks in tables.items():
            # Tables only grow, a chunk per save that added rows: same chunk count, same table.
            if self.written.get(name) == len(chunks):
                continue
            self.written[name] = len(chunks)
            self.writer.write_table(name, decode_chunks(chunks, layout.REPRODUCE, name), self.run_order)
        if shifts:
            self.writer.write_table("shifts", pd.DataFrame(shifts), self.run_order)

    def _save_state(self) -> None:
        """Rank 0 saves every rank's training state in one file, then the tables so far."""
        mine = {
            "runs": self.runs.state_dict() if self.runs is not None else None,
            "optimizer": self.opt.state_dict() if self.opt is not None else None,
            "before": pack_summaries(self.before),
            "epoch_acc": {"correct": torch.from_numpy(self.pos.correct), "seen": self.pos.seen,
                          "loss_sum": torch.from_numpy(self.pos.loss_sum)},
        }
        collected = self._collect(mine)
        if collected is None:
            return
        tables, shifts, parts = collected
        # Each rank's own tables (encoded chunks) and run status travel with its state, for --resume.
        ranks = [dict(extra, tables=chunks, status=json.dumps(status)) for chunks, _, status, extra in parts]
        self.writer.save_state({
            "version": STATE_VERSION, "config": json.dumps(self.cfg.to_dict()), "world": self.dist.world,
            "epoch": self.pos.epoch, "step_in_epoch": self.pos.step_in_epoch, "global_step": self.pos.global_step,
            "ranks": ranks, "timings": json.dumps(self.timings),
        })
        self._write_tables(tables, shifts)
        self.writer.write_manifest(self._manifest())

    def _load_state(self) -> None:
        error, state = None, None
        if self.dist.is_main:
            try:
                state = self.writer.load_state(STATE_VERSIONS)
                saved = json.loads(state["config"])
                if saved != self.cfg.to_dict():
                    diff = sorted(k for k in saved if saved.get(k) != self.cfg.to_dict().get(k))
                    error = f"--resume {self.out}: options differ from the interrupted run ({', '.join(diff)}); resume with the same options"
                elif state.get("world", 1) != self.dist.world:
                    error = f"--resume {self.out}: the run used {state.get('world', 1)} processes; resume it with the same number (torchrun --nproc-per-node)"
            except NndistError as exc:
                error = str(exc)
        dist.raise_on_every_rank(error, self.dist)
        state = dist.broadcast_from_main(state, self.dist)
        mine = state["ranks"][self.dist.rank]
        if self.runs is not None:
            self.runs.load_state_dict(mine["runs"])
            load_optimizer_state(self.opt, mine["optimizer"], self.runs)  # type: ignore[arg-type]
        if state["version"] >= 3:  # encoded chunks
            self.tables = {name: decode_chunks(mine["tables"][name], layout.REPRODUCE, name).to_dict("records") for name in TABLES}
        else:  # version 2: the rows themselves
            self.tables = {name: list(rows) for name, rows in from_saved(mine["tables"]).items()}
        self.before = unpack_summaries(mine["before"])
        self.status.update(json.loads(mine["status"]))
        self.timings = json.loads(state["timings"])
        acc = from_saved(mine["epoch_acc"])
        self.pos = Progress(int(state["epoch"]), int(state["step_in_epoch"]), int(state["global_step"]),
                            np.asarray(acc["correct"] if acc["correct"] is not None else np.zeros(0), dtype=np.float64),
                            np.asarray(acc["loss_sum"] if acc["loss_sum"] is not None else np.zeros(0), dtype=np.float64),
                            int(acc["seen"]))

    def _manifest(self, finished: bool = False) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "normalisation": {"mean": list(self.data.mean), "std": list(self.data.std)},
            "versions": versions(),
            "seeds": {"data_order": self.cfg.seed, "random_inputs": self.cfg.seed,
                      "init": {k.name: self.cfg.init_seed + k.seed for k in self.keys}},
            "device": str(self.device),
            "classes": self.data.classes,
            "samples": {"train": len(self.data.train_idx), "valid": len(self.data.valid_idx), "random": len(self.data.valid_idx)},
            "subsets": {"train": [int(i) for i in self.data.train_idx], "valid": [int(i) for i in self.data.valid_idx]},
            "bad_files": self.data.bad_files,
            "runs": self.status,
            "timings": self.timings,
            "started": self.started,
            "finished": utc_now() if finished else None,
        }


def run_reproduce(
    config: ReproduceConfig | None,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    report: bool = True,
    keep_state: bool = False,
) -> Path:
    """Runs the initialisation study and writes its run directory.

    Args:
        config: the study's configuration (profile defaults are filled in); None with
            ``resume=True`` reads it from the run's manifest.
        out_dir: the run directory.
        overwrite: replace a non-empty ``out_dir``.
        resume: continue an interrupted run in ``out_dir`` with the same options.
        progress: show progress bars.
        report: also draw the figures and write TensorBoard events, claims and the HTML report.
        keep_state: keep the resume state (``state/``) of the completed run (default: delete it).

    Returns:
        The run directory.

    Raises:
        NndistError: on a bad option, data source, model or output directory.
    """
    config = study_config(ReproduceConfig, config, out_dir, resume=resume, kind=layout.REPRODUCE)
    return InitStudy(config, out_dir, progress=progress).run(overwrite=overwrite, resume=resume, report=report, keep_state=keep_state)
