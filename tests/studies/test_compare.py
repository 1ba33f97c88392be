"""``run_compare``: a compare run directory from generated checkpoints, run directories and model names."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from weights_fixtures import torchvision_state_dict, write_planted_pair, write_torchvision_pth

import nndist
from nndist.errors import NndistError
from nndist.models import create_model
from nndist.results import RunWriter, layout, load_run
from nndist.stats.weightstats import COMPARE_COLUMNS, COMPARE_STATUSES
from nndist.studies.compare import open_source, resolve_sources, run_compare


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The planted pair and its compare run directory (figures, TensorBoard and report included)."""
    root = tmp_path_factory.mktemp("planted")
    a, b, _ = write_planted_pair(root)
    return a, b, nndist.run_compare([str(a), str(b)], root / "cmp", top=3, progress=False)


def test_planted_change_ranks_first_and_every_tensor_is_listed(planted):
    a, b, out = planted
    table = pd.read_parquet(out / "compare.parquet")
    assert list(table.columns) == ["a", "b", *COMPARE_COLUMNS, "status"]
    assert set(table["a"]) == {str(a)} and set(table["b"]) == {str(b)}
    top = table.iloc[0]
    assert (top["tensor"], top["status"]) == ("lm_head.weight", "compared")
    assert abs(top["rel_change"] - 0.5) < 1e-12 and top["std_b"] == pytest.approx(1.5 * top["std_a"], rel=1e-12)
    statuses = table.set_index("tensor")["status"]
    assert statuses["model.norm.weight"] == "only in a" and statuses["model.extra.bias"] == "only in b"
    assert statuses["model.layers.0.self_attn.k_proj.weight"] == "shape mismatch"
    assert statuses["model.position_ids"] == "not summarised"


def test_run_directory_holds_manifest_histograms_figures_and_report(planted):
    a, b, out = planted
    run = load_run(out)
    assert run.kind == layout.COMPARE
    m = run.manifest
    assert [s["label"] for s in m["sources"]] == [str(a), str(b)] and m["pairs"] == [[str(a), str(b)]]
    assert m["sources"][0]["files"][0].endswith("model-00001-of-00002.safetensors")  # both shards
    assert m["counts"] == {"compared": 11, "shape mismatch": 1, "only in a": 1, "only in b": 1, "not summarised": 1}
    assert m["config"]["top"] == 3 and m["finished"]
    hist = run.table("histograms")
    # every floating tensor of each source, read in the same pass, its counts the tensor's size
    sizes = hist.groupby(["source", "tensor"])["count"].sum()
    assert sizes[(str(a), "lm_head.weight")] == 50 * 16 and (str(b), "model.extra.bias") in sizes
    assert (str(a), "model.position_ids") not in sizes
    for name in layout.KIND_FIGURES[layout.COMPARE]:
        for fmt in layout.FIGURE_FORMATS[name]:
            assert (out / layout.figure_file(name, fmt=fmt)).stat().st_size > 1000
    html = (out / layout.REPORT).read_text(encoding="utf-8")
    assert "Tensors, most changed first" in html and "claims apply to reproduce and gradients runs only" in html
    assert 'class="claim-row"' not in html
    assert pd.read_csv(out / layout.CLAIMS).empty


def test_tensorboard_histograms_per_source(planted):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(planted[2] / "tb"), size_guidance={event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    assert [e.step for e in acc.Histograms("weights/lm_head.weight")] == [0, 1]
    assert "shift/rel_change" in acc.Tags()["scalars"]


def _reproduce_dir(root: Path, *, missing: str | None = None) -> Path:
    """A reproduce run directory with checkpoints, through the writer (runs orthogonal, zeros)."""
    writer = RunWriter(root, layout.REPRODUCE)
    writer.write_manifest({"runs": {k: {"init": k, "seed": 0, "status": "done"} for k in ("orthogonal", "zeros")}})
    for i, key in enumerate(("orthogonal", "zeros")):
        for j, stage in enumerate((layout.BEFORE, layout.AFTER)):
            if f"{key}:{stage}" == missing:
                continue
            torch.manual_seed(10 * i + j)
            writer.write_checkpoint(key, stage, create_model("paper_cnn"), {"model": "paper_cnn"})
    return root


def test_run_directory_sources(tmp_path):
    run = _reproduce_dir(tmp_path / "rep")
    ck = lambda key, stage: str(run / layout.checkpoint_file(key, stage))  # noqa: E731
    got = resolve_sources([str(run)])
    assert [s.path for s in got] == [ck("orthogonal", "before"), ck("orthogonal", "after")]
    assert [s.label for s in got] == [f"{run}:orthogonal:before", f"{run}:orthogonal:after"]
    assert [s.path for s in resolve_sources([f"{run}:zeros"])] == [ck("zeros", "before"), ck("zeros", "after")]
    assert [s.path for s in resolve_sources([f"{run}::after", f"{run}:zeros:after"])] == [
        ck("orthogonal", "after"), ck("zeros", "after")]
    with pytest.raises(NndistError, match="has no run 'xavier'; its runs: orthogonal, zeros"):
        resolve_sources([f"{run}:xavier"])
    with pytest.raises(NndistError, match="stage 'epoch_1' has no checkpoint"):
        resolve_sources([f"{run}:zeros:epoch_1", f"{run}"])
    broken = _reproduce_dir(tmp_path / "broken", missing="orthogonal:after")
    with pytest.raises(NndistError, match=r"checkpoints/orthogonal/after.safetensors is missing.*--resume"):
        resolve_sources([str(broken)])


def test_a_run_directory_alone_compares_before_with_after(tmp_path):
    out = run_compare([str(_reproduce_dir(tmp_path / "rep"))], tmp_path / "cmp", progress=False, report=False)
    table = load_run(out).table("compare")
    assert set(table["status"]) == {"compared"} and (table["rel_change"] > 0.5).all()  # two independent inits
    assert not (out / layout.REPORT).exists()


def test_model_names_are_seeded_random_inits(tmp_path):
    one, two = resolve_sources(["paper_cnn@orthogonal", "paper_cnn"], init="kaiming_normal", seed=3)
    assert (one.init, two.init, one.seed) == ("orthogonal", "kaiming_normal", 3)
    assert one.label == "paper_cnn (orthogonal, seed 3)"
    a, b = open_source(one), open_source(one)  # the same seed gives the same tensors
    assert all(torch.equal(a.read(n), b.read(n)) for n in a.names())
    model = create_model("paper_cnn")
    save_file({k: v.contiguous() for k, v in dict(model.state_dict()).items()}, str(tmp_path / "m.safetensors"))
    table = run_compare(["paper_cnn@orthogonal", str(tmp_path / "m.safetensors")], tmp_path / "cmp",
                        progress=False, report=False)
    assert set(load_run(table).table("compare")["status"]) == {"compared"}


def test_three_sources_and_formats(tmp_path):
    sd = torchvision_state_dict()
    pth = write_torchvision_pth(tmp_path / "ddp.pth", sd)
    save_file(sd, str(tmp_path / "plain.safetensors"))
    scaled = {k: v * 2 if v.is_floating_point() else v for k, v in sd.items()}
    save_file(scaled, str(tmp_path / "scaled.safetensors"))
    out = run_compare([str(pth), str(tmp_path / "plain.safetensors"), str(tmp_path / "scaled.safetensors")],
                      tmp_path / "cmp", against="previous", progress=False)
    run = load_run(out)
    assert run.manifest["sources"][0]["prefix_stripped"] == "module."
    table = run.table("compare")
    first = table[(table.b == str(tmp_path / "plain.safetensors")) & (table.status == "compared")]
    second = table[(table.b == str(tmp_path / "scaled.safetensors")) & (table.status == "compared")]
    assert (first["rel_change"] == 0).all()
    doubled = [0.0 if not sd[t].any() else 1.0 for t in second["tensor"]]  # all-zero tensors stay zero
    assert second["rel_change"].tolist() == pytest.approx(doubled, abs=1e-12) and 1.0 in doubled
    assert table["status"].isin(COMPARE_STATUSES).all()


def test_bad_arguments_write_nothing(tmp_path):
    a, b, _ = write_planted_pair(tmp_path)
    out = tmp_path / "cmp"
    with pytest.raises(NndistError, match="two or more sources"):
        run_compare([str(a)], out)
    with pytest.raises(NndistError, match="'last'"):
        run_compare([str(a), str(b)], out, against="last")
    with pytest.raises(NndistError, match="--top must be at least 1"):
        run_compare([str(a), str(b)], out, top=0)
    with pytest.raises(NndistError, match="neither a path nor a known model: unknown model 'resnet9000'"):
        run_compare([str(a), "resnet9000"], out)
    with pytest.raises(NndistError, match="unknown init"):
        run_compare([str(a), "paper_cnn@golden"], out)
    assert not out.exists()


def test_gradients_and_other_runs_as_sources(tmp_path):
    ck = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(3)}, str(ck))
    grads = RunWriter(tmp_path / "g", layout.GRADIENTS)
    grads.write_manifest({"config": {"model": "paper_cnn", "weights": str(ck)}})
    assert [s.path for s in resolve_sources([str(tmp_path / "g"), str(ck)])] == [str(ck), str(ck)]
    RunWriter(tmp_path / "c", layout.COMPARE).write_manifest({})
    with pytest.raises(NndistError, match="is a compare run, which keeps no checkpoints"):
        resolve_sources([str(tmp_path / "c"), str(ck)])
    (tmp_path / "c" / "manifest.json").write_text(json.dumps({"kind": "gradients", "config": {"weights": None}}))
    with pytest.raises(NndistError, match="randomly initialised model"):
        resolve_sources([str(tmp_path / "c"), str(ck)])
