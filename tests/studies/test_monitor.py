"""``nndist.Monitor`` in one process: its rows against float64 summaries of the same tensors, the
logging steps and hook arming, the run directory (parts, resume, replay, refusals), names, channels,
Emission/Absorption on a probe batch, and the device path's one host transfer per step."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import nndist
from nndist.errors import NndistError
from nndist.probes import emission_absorption
from nndist.results import load_run
from nndist.stats.batch import StepSummaries
from nndist.studies.monitor import monitor as monitor_mod
from monitor_cases import Tokens, Twin, assert_rows_equal, data, hooks_on, listing, tiny, train
from host_reads import HostReads

LAYERS = ["conv", "bn", "fc", "norm", "head"]
DIMS = {"conv": 1, "bn": 1, "fc": -1, "norm": -1, "head": -1}


@pytest.fixture
def device_side(request, monkeypatch):  # noqa: ANN001
    """Runs the test on the CPU path (default) or forces the device-side path on the CPU."""
    forced = getattr(request, "param", None)
    if forced:
        monkeypatch.setattr(monitor_mod, "StepSummaries", lambda: StepSummaries(device_side=True))
    return forced


@pytest.mark.parametrize("device_side", [None, True], indirect=True, ids=["cpu-path", "device-path"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_rows_equal_float64_summaries_of_the_same_tensors(tmp_path, device_side, per_channel) -> None:  # noqa: ANN001
    model = tiny()
    twin = Twin(model, LAYERS, DIMS)
    mon = nndist.Monitor(model, tmp_path / "run", every=2, per_channel=per_channel)

    def step(i: int) -> None:
        twin.record(i, i % 2 == 0, per_channel)
        assert mon.step() == (i % 2 == 0)

    train(model, data(5), step)
    mon.close(report=False)
    run = load_run(tmp_path / "run")
    assert run.manifest["status"] == "finished" and run.manifest["config"]["layers"] == LAYERS
    for table, keys in (("weights", ["step", "layer", "param", "channel"]), ("grads", ["step", "layer", "param", "channel"]),
                        ("features", ["step", "layer", "channel"])):
        got = run.table(table)
        assert sorted(got["step"].unique()) == [0, 2, 4]
        assert_rows_equal(got, twin.frame(table), keys)
    hist = run.table("histograms")
    want = pd.DataFrame(twin.hist)
    keys = ["table", "step", "layer", "param", "left"]
    pd.testing.assert_frame_equal(hist.sort_values(keys).reset_index(drop=True)[want.columns],
                                  want.sort_values(keys).reset_index(drop=True), check_dtype=False)


def test_hooks_are_armed_only_for_the_forward_of_a_logging_step(tmp_path) -> None:  # noqa: ANN001
    model = tiny()
    seen: list[int] = []
    mon = nndist.Monitor(model, tmp_path / "run", every=3, watch=("features",))

    class Spy(nn.Module):  # records how many hooks the watched layers carry during each forward
        def forward(self, x):  # noqa: ANN001
            seen.append(hooks_on(model))
            return model(x)

    spy = Spy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for i, (x, y) in enumerate(data(8)):
        nn.functional.cross_entropy(spy(x), y).backward()
        mon.step()
        opt.step()
        opt.zero_grad()
    assert seen == [len(LAYERS) if i % 3 == 0 else 0 for i in range(8)]
    mon.close(report=False)
    assert hooks_on(model) == 0
    assert sorted(load_run(tmp_path / "run").table("features")["step"].unique()) == [0, 3, 6]


def test_explicit_steps_and_evaluation_passes(tmp_path) -> None:  # noqa: ANN001
    model = tiny()
    mon = nndist.Monitor(model, tmp_path / "run", every=5, watch=("features",), layers=["head"])
    x, y = data(1)[0]
    for step in range(100, 111):
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():  # a validation pass between steps is not the training forward
            model(torch.cat([x, x]))
        mon.step(step=step)
        model.zero_grad()
    mon.close(report=False)
    f = load_run(tmp_path / "run").table("features")
    assert list(f["step"]) == [100, 105, 110] and (f["n"] == 8 * 5).all()


def test_no_hook_is_left_after_close_or_after_an_exception(tmp_path) -> None:  # noqa: ANN001
    model = tiny()
    with nndist.Monitor(model, tmp_path / "a", every=1) as mon:
        assert hooks_on(model) == len(LAYERS)
        train(model, data(2), lambda i: mon.step())
    assert hooks_on(model) == 0 and load_run(tmp_path / "a").manifest["status"] == "finished"
    with pytest.raises(RuntimeError, match="boom"):
        with nndist.Monitor(model, tmp_path / "b", every=1) as mon:
            train(model, data(1), lambda i: mon.step())
            raise RuntimeError("boom")
    assert hooks_on(model) == 0
    assert load_run(tmp_path / "b").manifest["status"] == "running"  # unfinished: resume=True continues it
    with pytest.raises(NndistError, match="closed"):
        mon.step()


def _bad(tmp_path):  # noqa: ANN001
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"kind": "gradients"}))
    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "notes.txt").write_text("mine")
    unfinished = tmp_path / "unfinished"
    m = nndist.Monitor(tiny(), unfinished, every=1)
    train(m.model, data(1), lambda i: m.step())
    m._disarm()  # killed: no close()
    return {
        "non-module": (lambda: nndist.Monitor(object(), tmp_path / "x"), "torch.nn.Module"),
        "every=0": (lambda: nndist.Monitor(tiny(), tmp_path / "x", every=0), "every must be a positive int"),
        "every=True": (lambda: nndist.Monitor(tiny(), tmp_path / "x", every=True), "every must be a positive int"),
        "watch kind": (lambda: nndist.Monitor(tiny(), tmp_path / "x", watch=("weights", "activations")), "'activations'"),
        "watch empty": (lambda: nndist.Monitor(tiny(), tmp_path / "x", watch=()), "non-empty subset"),
        "layer": (lambda: nndist.Monitor(tiny(), tmp_path / "x", layers=["conv", "nope"]), "'nope' matches no module"),
        "pattern": (lambda: nndist.Monitor(tiny(), tmp_path / "x", layers="block*"), "layers with parameters: conv, bn"),
        "other kind": (lambda: nndist.Monitor(tiny(), other), "holds a 'gradients' run"),
        "not a run": (lambda: nndist.Monitor(tiny(), alien), "files that are not an nndist run"),
        "unfinished": (lambda: nndist.Monitor(tiny(), unfinished), "unfinished monitor run"),
        "probe alone": (lambda: nndist.Monitor(tiny(), tmp_path / "x", probe=data(1)[0]), "used with gradients_every"),
        "no probe": (lambda: nndist.Monitor(tiny(), tmp_path / "x", gradients_every=2), "needs probe="),
        "bad probe": (lambda: nndist.Monitor(tiny(), tmp_path / "x", gradients_every=2, probe=[1, 2]), "probe must be"),
    }


def test_bad_input_is_one_line_naming_the_fix_and_damages_nothing(tmp_path) -> None:  # noqa: ANN001
    cases = _bad(tmp_path)
    before = listing(tmp_path)
    for name, (make, text) in cases.items():
        with pytest.raises(NndistError) as err:
            make()
        msg = str(err.value)
        assert text in msg and "\n" not in msg, (name, msg)
    assert listing(tmp_path) == before
    assert not (tmp_path / "x").exists()


def test_steps_must_increase_without_resume(tmp_path) -> None:  # noqa: ANN001
    model = tiny()
    mon = nndist.Monitor(model, tmp_path / "run", every=1, watch=("weights",))
    mon.step(step=4)
    before = listing(tmp_path / "run")
    for bad in (4, 3):
        with pytest.raises(NndistError, match=f"step={bad} does not come after step 4.*resume=True"):
            mon.step(step=bad)
    for bad in (-1, 1.5, True):
        with pytest.raises(NndistError, match="step must be an int"):
            mon.step(step=bad)
    assert listing(tmp_path / "run") == before
    mon.close(report=False)


def test_resume_replays_steps_without_duplicates(tmp_path) -> None:  # noqa: ANN001
    """A script that restarts from its step-4 checkpoint and replays steps 5.. leaves each step once."""
    batches = data(10)
    model = tiny()
    mon = nndist.Monitor(model, tmp_path / "run", every=2, watch=("weights", "features"))
    train(model, batches[:7], lambda i: mon.step(step=i))  # steps 0..6 recorded: 0, 2, 4, 6; then "killed"
    mon._disarm()
    state = {k: v.clone() for k, v in tiny().state_dict().items()}  # any weights: the replay's rows must win
    model2 = tiny()
    model2.load_state_dict(state)
    mon2 = nndist.Monitor(model2, tmp_path / "run", every=2, watch=("weights", "features"), resume=True)
    assert mon2._next == 7
    train(model2, batches[5:], lambda i: mon2.step(step=5 + i))  # replays 5, 6 then 7..9
    mon2.close(report=False)
    run = load_run(tmp_path / "run")
    w = run.table("weights")
    assert w.groupby("step").size().to_dict() == {s: 9 for s in (0, 2, 4, 6, 8)}  # 9 parameters, each step once
    # step 6 comes from the replay: model2's weights at its second step, not the first run's
    first = w[(w["step"] == 6) & (w["layer"] == "fc") & (w["param"] == "weight")]["mean"].iloc[0]
    m3 = tiny()
    m3.load_state_dict(state)
    got = []
    train(m3, batches[5:7], lambda i: got.append(float(m3.fc.weight.detach().double().mean())) if i == 1 else None)
    assert first == pytest.approx(got[0], rel=1e-12)
    assert run.manifest["resumed"] and run.manifest["steps"] == {"recorded": 5, "first": 0, "last": 8}


def test_a_finished_run_is_replaced_or_continued_and_other_files_stay(tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    model = tiny()
    with nndist.Monitor(model, out, every=1, watch=("weights",)) as mon:
        train(model, data(3), lambda i: mon.step())
    (out / "checkpoint.pt").write_text("user file")
    with nndist.Monitor(model, out, every=1, watch=("weights",), resume=True) as mon:  # continued: steps 3, 4
        train(model, data(2), lambda i: mon.step())
    assert sorted(load_run(out).table("weights")["step"].unique()) == [0, 1, 2, 3, 4]
    with nndist.Monitor(model, out, every=1, watch=("weights",)) as mon:  # replaced
        train(model, data(1), lambda i: mon.step())
    assert sorted(load_run(out).table("weights")["step"].unique()) == [0]
    assert (out / "checkpoint.pt").read_text() == "user file"


# dynamo itself warns when it resumes after the hook's graph break (it reads .grad of activations)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_names_are_those_of_the_inner_model(tmp_path) -> None:  # noqa: ANN001
    model = tiny()
    compiled = torch.compile(model, backend="eager")
    parallel = nn.DataParallel(model)
    for i, wrapped in enumerate([compiled, parallel]):
        mon = nndist.Monitor(wrapped, tmp_path / f"run{i}", every=1)
        assert mon.layer_names == LAYERS
        train(wrapped, data(2), lambda s: mon.step())
        mon.close(report=False)
        assert list(dict.fromkeys(load_run(tmp_path / f"run{i}").table("features")["layer"])) == LAYERS
        assert hooks_on(model) == 0


def test_layer_patterns_and_module_names(tmp_path) -> None:  # noqa: ANN001
    assert nndist.Monitor(tiny(), tmp_path / "a", layers="*n*").layer_names == ["conv", "bn", "norm"]
    assert nndist.Monitor(tiny(), tmp_path / "b", layers=["head", "conv"]).layer_names == ["conv", "head"]
    assert nndist.Monitor(tiny(), tmp_path / "c", layers=["relu"]).layer_names == ["relu"]  # a name: any module
    with pytest.raises(NndistError, match="'relu\\*' matches no module"):  # a pattern: modules with parameters
        nndist.Monitor(tiny(), tmp_path / "d", layers=["relu*"])


def test_channels_follow_the_layer_type(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = Tokens()
    mon = nndist.Monitor(model, tmp_path / "run", every=1, per_channel=True)
    tokens = torch.randint(0, 11, (4, 7))
    model(tokens).sum().backward()
    mon.step()
    mon.close(report=False)
    run = load_run(tmp_path / "run")
    f = run.table("features")
    assert f[f["layer"] == "emb"]["channel"].max() == 5 and f[f["layer"] == "fc"]["channel"].max() == 4
    assert (f[f["channel"].notna()]["n"] == 4 * 7).all()
    w = run.table("weights")
    assert w[(w["layer"] == "emb")]["channel"].max() == 10  # dim 0 of the (11, 6) table
    model2 = tiny()
    mon2 = nndist.Monitor(model2, tmp_path / "run2", every=1, per_channel=True, watch=("features",))
    train(model2, data(1), lambda i: mon2.step())
    mon2.close(report=False)
    f2 = load_run(tmp_path / "run2").table("features")
    assert f2[f2["layer"] == "conv"]["channel"].max() == 3 and f2[f2["layer"] == "norm"]["channel"].max() == 7
    assert (f2[(f2["layer"] == "conv") & f2["channel"].notna()]["n"] == 8 * 6 * 6).all()


def test_gradients_on_a_probe_batch_do_not_touch_training(tmp_path) -> None:  # noqa: ANN001
    batches = data(6)
    probe = data(1, seed=7, batch=5)[0]
    plain = tiny()
    train(plain, batches, None)
    model = tiny()
    model.bn.train()
    mon = nndist.Monitor(model, tmp_path / "run", every=100, watch=("weights",), gradients_every=2, probe=probe)
    expected = {}

    def step(i: int) -> None:
        if i % 2 == 0:
            reference = tiny()
            reference.load_state_dict(model.state_dict())
            res = emission_absorption(reference.eval(), *probe, layers=["conv", "fc", "head"])
            expected[i] = {k: (v.emission, v.absorption) for k, v in res.items()}
        grads = [p.grad.clone() for p in model.parameters()]
        buffers = [b.clone() for b in model.buffers()]
        mon.step()
        assert model.training and model.bn.training
        assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))

    train(model, batches, step)
    mon.close(report=False)
    for a, b in zip(plain.state_dict().values(), model.state_dict().values()):  # the same training, bit for bit
        assert torch.equal(a, b)
    g = load_run(tmp_path / "run").table("gradients")
    assert sorted(g["step"].unique()) == [0, 2, 4] and set(g["layer"]) == {"conv", "fc", "head"}
    for step, layers in expected.items():
        for layer, (em, ab) in layers.items():
            for stat, values in (("emission", em), ("absorption", ab)):
                rows = g[(g["step"] == step) & (g["layer"] == layer) & (g["stat"] == stat)].sort_values("channel")
                want = nndist.Summary(values.shape[1]).update(values.double())
                assert np.array_equal(rows["n"], want.n) and np.array_equal(rows["max"], want.max)
                np.testing.assert_allclose(rows["mean"], want.mean, rtol=1e-9)


def test_device_path_moves_data_to_the_host_once_per_logging_step(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    batches = {}
    monkeypatch.setattr(monitor_mod, "StepSummaries", lambda: batches.setdefault("b", StepSummaries(device_side=True)))
    for per_channel, per_step in ((False, 1), (True, 2)):
        model = tiny()
        mon = nndist.Monitor(model, tmp_path / f"run{per_channel}", every=2, per_channel=per_channel)
        batch = batches.pop("b")
        reads = HostReads(monkeypatch)
        transfers = []

        def step(i: int) -> None:
            mon.step()
            transfers.append(batch.transfers)

        train(model, data(5), step)
        host_reads = list(reads.calls)
        monkeypatch.undo()
        monkeypatch.setattr(monitor_mod, "StepSummaries", lambda: batches.setdefault("b", StepSummaries(device_side=True)))
        assert transfers == [per_step * k for k in (1, 1, 2, 2, 3)]
        assert host_reads == ["numpy"] * (3 * per_step), host_reads  # the transfers, no read per tensor
        mon.close(report=False)


def test_memory_does_not_grow_with_steps(tmp_path) -> None:  # noqa: ANN001
    model = tiny()
    mon = nndist.Monitor(model, tmp_path / "run", every=1, per_channel=True)
    train(model, data(3), lambda i: mon.step())
    import tracemalloc

    tracemalloc.start()
    train(model, data(3), lambda i: mon.step())
    early = tracemalloc.get_traced_memory()[0]
    train(model, data(20), lambda i: mon.step())
    late = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert late - early < 200_000, (early, late)
    assert len(mon._batch.partials) == 0 and mon._batch._host == {}
    mon.close(report=False)
