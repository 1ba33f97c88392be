"""``nndist.Monitor``: distributions of weights, gradients and features inside the user's training loop.

A step is a *logging step* when its number is a multiple of ``every`` (numbers count from 0, or
are the ``step=`` passed to :meth:`Monitor.step`). Forward hooks are put on the watched layers
only for the forward of a step that will be a logging step: after :meth:`Monitor.step` of step
``s`` returns, the hooks are armed when ``s + 1`` is a logging step, and removed in the next
:meth:`Monitor.step`, so the forwards of other steps run without hooks. The hooks take outputs
computed with autograd on (the training forward), not those of ``no_grad`` evaluation passes.

At a logging step, :meth:`Monitor.step` summarises the weights as they are (those the forward
used, before ``optimizer.step()``), the gradients as accumulated in ``.grad``, and the outputs
seen by the hooks, each on its own device (:class:`~nndist.stats.batch.StepSummaries`: on CUDA
one transfer per step, no sync per tensor), merges them across processes and writes the rows
of the step as one part per table before it returns.

Processes (``torchrun``): plain parameters and gradients are the same on every rank (DDP) and
are summarised by rank 0 only; features are merged over all ranks exactly (counts and bucket
counts add, moments merge in float64) by :func:`nndist.stats.merge_to_main`; parameters that
are DTensor shards (FSDP2) are summarised shard by shard on every rank and merged likewise.
Rank 0 writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ... import dist as ndist
from ...errors import NndistError
from ...probes import forward_hooks
from ...results import utc_now, versions
from ...stats import Summary, merge_to_main
from ...stats.batch import StepSummaries
from ...stats.partials import KeySpace, embed_channels
from .probe import Probe
from .rundir import MonitorRun, layer_info, step_tables
from .targets import Layer, channel_dim, param_view, select_layers, unwrap

__all__ = ["WATCH", "Monitor"]

#: What a monitor can watch.
WATCH = ("weights", "grads", "features")
MAX_STEP = 10**12

Key = tuple[str, str, str | None]


def _positive_int(value: Any, what: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NndistError(f"{what} must be a positive int, got {value!r}; {hint}")
    return int(value)


def _watch(watch: Any) -> tuple[str, ...]:
    kinds = (watch,) if isinstance(watch, str) else tuple(watch) if isinstance(watch, (tuple, list, set, frozenset)) else None
    if not kinds or not all(isinstance(k, str) for k in kinds):
        raise NndistError(f"watch must be a non-empty subset of {WATCH}, got {watch!r}")
    bad = [k for k in kinds if k not in WATCH]
    if bad:
        raise NndistError(f"unknown watch kind(s) {', '.join(map(repr, bad))}; choose from {', '.join(WATCH)}")
    return tuple(k for k in WATCH if k in kinds)


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


class Monitor:
    """Watches the distributions of a model's weights, gradients and features while it trains.

    Example::

        mon = nndist.Monitor(model, "runs/mine", every=100)
        for step, (x, y) in enumerate(loader):
            loss = loss_fn(model(x), y)
            loss.backward()
            mon.step()              # after backward, before optimizer.step()
            opt.step(); opt.zero_grad()
        mon.close()

    Args:
        model: the model (a ``DistributedDataParallel``, ``torch.compile`` or FSDP2 model is
            read through its wrappers; layer names are those of the inner model).
        out: the run directory (see :mod:`.rundir` for what is done with an existing one).
        every: a step whose number is a multiple of ``every`` is recorded.
        watch: any subset of ``("weights", "grads", "features")``.
        layers: module names or glob patterns; default every module with parameters of its own.
        per_channel: also one row per channel (dim 0 of parameters; dim 1 of conv/norm outputs,
            the last dim of other outputs).
        gradients_every: every this many steps, Emission and Absorption of the watched Conv2d
            and Linear layers on ``probe`` (eval mode; the model's modes and buffers restored)
            into the ``gradients`` table.
        probe: ``(inputs, targets)``: the fixed batch for ``gradients_every``.
        resume: continue the monitor run in ``out``; a ``step=`` already recorded is replaced.

    Raises:
        NndistError: a bad argument or ``out`` (one line naming the fix), on every rank.
    """

    def __init__(
        self,
        model: nn.Module,
        out: str | Path,
        *,
        every: int = 100,
        watch: Iterable[str] | str = ("weights", "grads", "features"),
        layers: Iterable[str] | str | None = None,
        per_channel: bool = False,
        gradients_every: int | None = None,
        probe: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        resume: bool = False,
    ) -> None:
        self._hooks = contextlib.ExitStack()
        self._closed = True  # until the run directory is open
        if not isinstance(model, nn.Module):
            raise NndistError(f"Monitor watches a torch.nn.Module, got {type(model).__name__}; pass the model being trained")
        self.every = _positive_int(every, "every", "a step whose number is a multiple of every is recorded")
        self.watch = _watch(watch)
        if gradients_every is not None:
            gradients_every = _positive_int(gradients_every, "gradients_every", "or None to measure no gradients")
            if probe is None:
                raise NndistError("gradients_every needs probe=(inputs, targets): the fixed batch to measure on")
        elif probe is not None:
            raise NndistError("probe= is used with gradients_every=K; pass both, or neither")
        self.gradients_every = gradients_every
        self.per_channel = bool(per_channel)
        self.resume = bool(resume)
        self.info = ndist.DistInfo(dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else ndist.DistInfo()
        self.model = unwrap(model)
        self.layers: list[Layer] = select_layers(self.model, layers)
        self._sharded = any(param_view(p).sharded for layer in self.layers for _, p in layer.params)
        if gradients_every is not None and self._sharded:
            raise NndistError("gradients_every is not supported on sharded (FSDP) parameters: the probe would need every "
                              "rank's shards; leave gradients_every=None")
        self._probe = Probe(self.model, self.layers, probe) if gradients_every is not None else None
        self._channel_dims = {layer.name: channel_dim(layer.module) for layer in self.layers}
        self._name_of = {id(layer.module): layer.name for layer in self.layers}
        # torch.compile must not trace the hook: it runs eagerly, on the real outputs
        self._hook_fn = torch.compiler.disable(self._hook)
        self._batch = StepSummaries()
        self._space = KeySpace()
        self._run: MonitorRun | None = None
        self._starts: dict[Key, tuple[int, int]] = {}
        error = None
        if self.info.is_main:
            try:
                self._run = MonitorRun(out, resume=self.resume)
            except NndistError as exc:
                error = str(exc)
        ndist.raise_on_every_rank(error, self.info)
        last = ndist.broadcast_from_main(None if self._run is None else self._run.last_step, self.info)
        self._last: int | None = last if self.resume else None
        self._next = 0 if last is None else last + 1
        self._armed = False
        self._started = utc_now()
        self._recorded = 0
        self._closed = False
        if self._run is not None:
            self._write_manifest("running")
        self._arm_if_logging(self._next)

    # ------------------------------------------------------------------ properties
    @property
    def path(self) -> Path | None:
        """The run directory (None on ranks other than 0)."""
        return None if self._run is None else self._run.path

    @property
    def layer_names(self) -> list[str]:
        """The watched layers, in model order."""
        return [layer.name for layer in self.layers]

    # ------------------------------------------------------------------ hooks
    def _hook(self, module: nn.Module, _args: Any, output: Any) -> None:
        if not torch.is_grad_enabled():  # an evaluation pass, not the training forward
            return
        t = _first_tensor(output)
        if t is None or not t.is_floating_point():
            return
        name = self._name_of[id(module)]
        key = ("features", name, None)
        if self.per_channel and t.ndim:
            self._batch.add_channels(key, t.detach(), self._channel_dims[name] if t.ndim > 1 else -1, whole=True)
        else:
            self._batch.hold(key, t.detach())

    def _arm_if_logging(self, step: int) -> None:
        if "features" in self.watch and step % self.every == 0 and not self._armed:
            self._hooks.enter_context(forward_hooks([layer.module for layer in self.layers], self._hook_fn))
            self._armed = True

    def _disarm(self) -> None:
        self._hooks.close()
        self._hooks = contextlib.ExitStack()
        self._armed = False

    # ------------------------------------------------------------------ the step
    def _resolve(self, step: int | None) -> int:
        if step is None:
            return self._next
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < MAX_STEP:
            raise NndistError(f"step must be an int in [0, {MAX_STEP}), got {step!r}")
        if self._last is not None and step <= self._last and not self.resume:
            raise NndistError(f"step={step} does not come after step {self._last}; steps must increase "
                              "(pass resume=True to replay steps: their rows are replaced)")
        return int(step)

    def step(self, step: int | None = None) -> bool:
        """Ends a training step: records it if it is a logging step. Call after ``backward()``,
        before ``optimizer.step()``.

        Args:
            step: this step's number (e.g. the global step); default the previous one plus 1,
                starting at 0 (after the last recorded step when resuming).

        Returns:
            Whether anything was recorded at this step.

        Raises:
            NndistError: a step that does not increase (without ``resume``), or the monitor is closed.
        """
        if self._closed:
            raise NndistError("this Monitor is closed; create a new one (resume=True continues its run)")
        s = self._resolve(step)
        logging = s % self.every == 0
        gradients = self.gradients_every is not None and s % self.gradients_every == 0
        self._disarm()
        try:
            if logging or gradients:
                with torch.no_grad():
                    self._record(s, logging, gradients)
            else:
                self._batch.collect()  # outputs of a step that was not a logging step after all
        finally:
            self._last, self._next = s, s + 1
            self._arm_if_logging(self._next)
        return logging or gradients

    def _keys(self, logging: bool, gradients: bool) -> list[Key]:
        keys: list[Key] = []
        for layer in self.layers:
            if logging:
                keys += [(table, layer.name, p) for table in ("weights", "grads") if table in self.watch for p, _ in layer.params]
                if "features" in self.watch:
                    keys.append(("features", layer.name, None))
            if gradients and self._probe is not None and layer.name in self._probe.layers:
                keys += [("gradients", layer.name, "emission"), ("gradients", layer.name, "absorption")]
        return keys

    def _add_params(self, tables: Iterable[str]) -> set[Key]:
        """Adds this rank's part of every watched parameter and gradient (``tables``: of
        ``weights``, ``grads``), all in one call; returns the keys of shards."""
        items, shards, starts = [], set(), {}
        for table, layer in ((table, layer) for table in tables for layer in self.layers):
            for pname, p in layer.params:
                t = p if table == "weights" else p.grad
                if t is None:
                    continue
                view = param_view(t)
                key = (table, layer.name, pname)
                if view.sharded:
                    shards.add(key)
                elif not self.info.is_main:
                    continue  # replicated (DDP): rank 0 summarises it
                if self.per_channel:
                    if view.local.numel():
                        self._batch.add_channels(key, view.local, 0, whole=True)
                    starts[key] = (view.start, view.channels)
                else:
                    items.append((key, view.local))
        self._batch.add_many(items)
        self._starts.update(starts)
        return shards

    def _record(self, step: int, logging: bool, gradients: bool) -> None:
        self._starts = {}
        mergeable: set[Key] = set()
        if logging:
            mergeable |= self._add_params([table for table in ("weights", "grads") if table in self.watch])
        if gradients and self._probe is not None and self.info.is_main:
            for name, res in self._probe.run().items():
                self._batch.add_channels(("gradients", name, "emission"), res.emission, 1)
                self._batch.add_channels(("gradients", name, "absorption"), res.absorption, 1)
        whole, chans = self._batch.collect()
        if not logging:  # a gradients-only step: outputs seen by armed hooks are not recorded
            whole = {k: v for k, v in whole.items() if k[0] != "features"}
        for key, (start, channels) in self._starts.items():
            if key in chans and (start or chans[key].channels != channels):
                chans[key] = embed_channels(chans[key], start, channels)
        if self.info.enabled:
            mergeable |= {k for k in self._keys(logging, False) if k[0] == "features"}
            merged = self._merge(whole, chans, mergeable)
            if merged is None:
                return
            whole, chans = merged
        if self._run is not None:
            self._run.write_step(step, step_tables(self._run.parts, step, self._keys(logging, gradients), whole, chans))
            self._recorded += 1

    def _merge(self, whole: dict[Hashable, Summary], chans: dict[Hashable, Summary], keys: set[Key]
               ) -> tuple[dict[Hashable, Summary], dict[Hashable, Summary]] | None:
        """Merges the summaries of ``keys`` over all ranks into rank 0's (None on the others)."""
        mine = [(k, "whole", None) for k in keys if k in whole] + [(k, "channels", chans[k].channels) for k in keys if k in chans]
        everyone: list[Any] = [None] * self.info.world
        dist.all_gather_object(everyone, mine)
        order = {k: i for i, k in enumerate(self._keys(True, False))}
        union = sorted({entry for rank in everyone for entry in rank}, key=lambda e: (order.get(e[0], len(order)), e[1]))
        local = [(whole if kind == "whole" else chans).get(key) or self._space.empty(c) for key, kind, c in union]
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        merged = merge_to_main(local, device=device)
        if merged is None:
            return None
        for (key, kind, _), s in zip(union, merged):
            (whole if kind == "whole" else chans)[key] = s
        return whole, chans

    # ------------------------------------------------------------------ manifest and closing
    def _write_manifest(self, status: str) -> None:
        assert self._run is not None
        prev = self._run.previous or {}
        steps = self._run.parts.recorded_steps() if status == "finished" else []
        manifest: dict[str, Any] = {
            "status": status,
            "config": {"every": self.every, "watch": list(self.watch), "layers": self.layer_names,
                       "per_channel": self.per_channel, "gradients_every": self.gradients_every,
                       "probe_samples": None if self._probe is None else self._probe.samples},
            "model": type(self.model).__name__,
            "layers": layer_info(self.layers, self._channel_dims),
            "world_size": self.info.world,
            "sharded": self._sharded,
            "device": str(next((p.device for p in self.model.parameters()), "cpu")),
            "versions": versions(),
            "started": prev.get("started", self._started),
            "resumed": [*prev.get("resumed", []), self._started] if prev else [],
        }
        if status == "finished":
            manifest["finished"] = utc_now()
            manifest["steps"] = {"recorded": len(steps), "first": steps[0] if steps else None,
                                 "last": steps[-1] if steps else None}
        self._run.writer.write_manifest(manifest)

    def close(self, *, report: bool = True) -> None:
        """Removes the hooks, compacts the tables into single files, marks the run finished and
        writes its TensorBoard events, figures and report (rank 0). Under several processes every
        rank returns once rank 0 has finished, so the run directory is complete on return and no
        rank leaves the process group while rank 0 still writes. Safe to call twice.

        Args:
            report: also write TensorBoard events, figures and report.html.
        """
        if self._closed:
            return
        self._disarm()
        self._closed = True
        try:
            if self._run is not None:
                self._run.close()
                self._write_manifest("finished")
                if report:
                    from ...report import finish_run_directory

                    finish_run_directory(self._run.path, figures=True)
        finally:  # also when rank 0 fails: the others then return instead of waiting for it
            ndist.barrier(self.info)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # the loop failed: no hook stays on the model; the run stays unfinished (resume=True continues it)
            self._disarm()
            self._closed = True

    def __repr__(self) -> str:
        return (f"Monitor({type(self.model).__name__}, out={str(self.path)!r}, every={self.every}, watch={self.watch}, "
                f"layers={len(self.layers)}, per_channel={self.per_channel})")
