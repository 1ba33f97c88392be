"""Weight tables and comparisons, each checked against a literal numpy float64 computation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from safetensors.torch import save_file
from weights_fixtures import (
    SmallConvNet,
    hf_tensors,
    torchvision_state_dict,
    write_hf_folder,
    write_planted_pair as _planted,
    write_torchvision_pth,
)

from nndist.stats import weightstats
from nndist.errors import NndistError
from nndist.stats import SUMMARY_COLUMNS, ks_distance, summarize, wasserstein
from nndist.models.weightfiles import _natural_key, open_weights
from nndist.stats.weightstats import (
    COMPARE_COLUMNS,
    WEIGHT_COLUMNS,
    compare,
    group_key,
    summarise_channels,
    summarise_tensor,
    tensor_summaries,
    value_change,
    weight_table,
    write_table,
)

# Tolerances against numpy/scipy in float64 (stats.py guarantees 1e-9 relative on the compiled
# float32 path and 1e-12 on the float64 path; merging chunks adds rounding of order 1e-15).
MOMENT_RTOL = 1e-9  # std, and mean relative to std
SHAPE_ATOL = 1e-8  # skew and excess kurtosis


def _reference(x: np.ndarray) -> dict[str, float]:
    """The definitions, in float64: population std, biased skew, excess kurtosis."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    out = {"n": x.size, "mean": x.mean(), "std": x.std(), "min": x.min(), "max": x.max()}
    out["skew"] = scipy.stats.skew(x) if x.std() > 0 else math.nan
    out["kurtosis"] = scipy.stats.kurtosis(x) if x.std() > 0 else math.nan
    return out


def _assert_moments(row: pd.Series | dict, x: np.ndarray) -> None:
    ref = _reference(x)
    assert row["n"] == ref["n"]
    assert row["min"] == ref["min"] and row["max"] == ref["max"]  # extremes exact
    std = ref["std"]
    assert abs(row["mean"] - ref["mean"]) <= MOMENT_RTOL * max(std, abs(ref["mean"]) * 1e-3)
    assert row["std"] == pytest.approx(std, rel=MOMENT_RTOL, abs=1e-300)
    for k in ("skew", "kurtosis"):
        if math.isnan(ref[k]):
            assert math.isnan(row[k])
        else:
            assert abs(row[k] - ref[k]) <= SHAPE_ATOL, k


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float64).numpy()


def _natural_order(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The order of a safetensors source: layers.2 before layers.10."""
    return sorted(tensors, key=_natural_key)


# ------------------------------------------------------------------------------------ summaries
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 7, 5000, 70_001])
def test_tensor_moments_against_numpy_float64(dtype: torch.dtype, n: int) -> None:
    g = torch.Generator().manual_seed(n)
    t = (torch.randn(n, generator=g, dtype=torch.float64) * 0.3 + 0.1).to(dtype)
    row = summarise_tensor(t).rows()[0]
    _assert_moments(row, _f64(t))


@pytest.mark.parametrize("n", [1, 2, 5000])
def test_summaries_leave_the_input_unchanged(n: int) -> None:
    model = torch.nn.Linear(n, 1)  # the bias has one element
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    weight_table(model, per_channel=True)
    compare([model, model])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_chunks_merge_to_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    t = torch.randn(10_007, dtype=torch.float64).to(torch.bfloat16)
    whole = summarise_tensor(t).rows()[0]
    monkeypatch.setattr(weightstats, "CHUNK_ELEMENTS", 999)  # 11 chunks, converted one by one
    chunked = summarise_tensor(t).rows()[0]
    _assert_moments(chunked, _f64(t))
    assert chunked["n"] == whole["n"] and chunked["q50"] == whole["q50"]  # bucket counts add exactly


def test_bf16_is_summarised_exactly_through_float32() -> None:
    # 1e30 and 3e-30 overflow/underflow float16 but are bfloat16 values; float32 holds every one.
    values = torch.tensor([1e30, -3e-30, 0.15625, -2.0, 7.0], dtype=torch.bfloat16)
    row = summarise_tensor(values).rows()[0]
    exact = values.to(torch.float64).numpy()
    assert row["max"] == exact.max() == float(torch.tensor(1e30, dtype=torch.bfloat16))
    assert row["min"] == -2.0 and row["nonfinite"] == 0
    assert row == summarise_tensor(values.float()).rows()[0]  # the same float32 values, the same summary
    _assert_moments(row, exact)


@pytest.mark.parametrize("shape", [(5, 3, 4), (7,), (300, 7), (2, 1, 1, 1)])
def test_per_channel_rows_against_a_literal_loop(shape: tuple[int, ...]) -> None:
    t = torch.randn(*shape, dtype=torch.float64).to(torch.bfloat16)
    table = weight_table({"conv.weight": t}, per_channel=True)
    assert table["channel"].isna().tolist() == [True] + [False] * shape[0]
    _assert_moments(table.iloc[0], _f64(t))
    for c in range(shape[0]):  # the definition: every value of slice t[c]
        row = table.iloc[1 + c]
        assert row["channel"] == c and (row["layer"], row["param"]) == ("conv", "weight")
        _assert_moments(row, _f64(t[c]))


def test_summarise_channels_refuses_scalars_and_other_channel_counts() -> None:
    with pytest.raises(NndistError, match="at least one dimension"):
        summarise_channels(torch.tensor(1.0))
    blocks = summarise_channels(torch.randn(3, 2))
    with pytest.raises(NndistError, match="cannot take a tensor with 4 channels"):
        summarise_channels(torch.randn(4, 2), blocks)


# ------------------------------------------------------------------------------------ grouping
@pytest.mark.parametrize(
    "name, group, key",
    [
        ("model.layers.3.mlp.up_proj.weight", "tensor", "model.layers.3.mlp.up_proj.weight"),
        ("model.layers.3.mlp.up_proj.weight", "layer", "model.layers.3.mlp.up_proj"),
        ("model.layers.3.mlp.up_proj.weight", "block", "model.layers.3"),
        ("model.layers.3.mlp.up_proj.weight", "model.layers.*", "model.layers.3"),
        ("model.layers.3.mlp.up_proj.weight", "model.layers.*.mlp", "model.layers.3.mlp"),
        ("model.layers.3.mlp.up_proj.weight", "model.layers.1?", "model.layers.3.mlp.up_proj.weight"),
        ("model.layers.3", "model.layers.*", "model.layers.3"),  # nothing below it: its own row
        ("layer1.0.conv1.weight", "block", "layer1.0"),
        ("model.embed_tokens.weight", "block", "model.embed_tokens"),
        ("params.0", "block", "params"),  # a trailing index is the tensor, not a block
        ("logit_scale", "layer", "logit_scale"),
    ],
)
def test_group_key(name: str, group: str, key: str) -> None:
    assert group_key(name, group) == key


@pytest.mark.parametrize("group", ["", "a..b", ".x"])
def test_bad_group_is_refused(group: str) -> None:
    with pytest.raises(NndistError, match="group must be one of tensor, layer, block or a dotted glob pattern"):
        weight_table({"a.b": torch.ones(2)}, group=group)


@pytest.mark.parametrize("group", ["layer", "block", "model.layers.*"])
def test_group_rows_equal_the_concatenation(tmp_path: Path, group: str) -> None:
    tensors = hf_tensors()
    table = weight_table(write_hf_folder(tmp_path / "hf", tensors), group=group)
    groups: dict[str, list[str]] = {}
    for name in _natural_order(tensors):
        if tensors[name].is_floating_point():
            groups.setdefault(group_key(name, group), []).append(name)
    assert len(table) == len(groups) + 1  # + the int64 position_ids, listed on its own
    for key, names in groups.items():
        if names == [key]:
            layer, _, param = key.rpartition(".")
            row = table[(table.layer == layer) & (table.param == param)].iloc[0]
        else:
            row = table[table.layer == key].iloc[0]
            assert row["param"] == ",".join(n[len(key) + 1 :] for n in names)
            assert row["shape"] == ",".join("x".join(map(str, tensors[n].shape)) for n in names)
        _assert_moments(row, np.concatenate([_f64(tensors[n]).ravel() for n in names]))


def test_grouping_merges_random_splits_exactly() -> None:
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 3000, size=9)
    parts = {f"blocks.0.p{i}": torch.from_numpy(rng.standard_normal(s) * (i + 1)).float() for i, s in enumerate(sizes)}
    row = weight_table(parts, group="blocks.*").iloc[0]
    assert row["layer"] == "blocks.0" and row["param"] == ",".join(f"p{i}" for i in range(9))
    _assert_moments(row, np.concatenate([_f64(t) for t in parts.values()]))


@pytest.mark.parametrize(
    "tensors, group",
    [
        ({"a.weight": torch.ones(2), "a": torch.ones(1)}, "layer"),
        ({"model.layers.3.w": torch.ones(2), "model.layers.3": torch.ones(2)}, "model.layers.*"),
        ({"model.layers.3.w": torch.ones(2), "model.layers.3": torch.ones(2, dtype=torch.int64)}, "model.layers.*"),
    ],
)
def test_name_colliding_after_grouping_is_an_error(tensors: dict[str, torch.Tensor], group: str) -> None:
    key = [n for n in tensors if "." not in n or n.endswith(".3")][0]
    with pytest.raises(NndistError) as exc:
        weight_table(tensors, group=group)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("state dict: ") and f"the tensor {key!r}" in msg
    assert "group='tensor'" in msg


def test_per_channel_group_needs_one_dim0() -> None:
    tensors = {"blocks.0.q.weight": torch.ones(4, 2), "blocks.0.k.weight": torch.ones(2, 2)}
    with pytest.raises(NndistError, match="dim 0 differs.*use group='layer'"):
        weight_table(tensors, group="block", per_channel=True)
    ok = weight_table(torchvision_state_dict(), group="layer", per_channel=True)
    bn = ok[(ok.layer == "bn1") & ok.channel.notna()]
    assert len(bn) == 8 and bn["n"].tolist() == [4] * 8  # weight, bias, running_mean, running_var


def test_per_channel_layer_group_against_a_literal_loop() -> None:
    sd = torchvision_state_dict()
    table = weight_table(sd, group="layer", per_channel=True)
    fc = table[table.layer == "fc"]
    assert fc.iloc[0]["param"] == "weight,bias"
    for c in range(10):
        _assert_moments(fc.iloc[1 + c], np.concatenate([_f64(sd["fc.weight"][c]), _f64(sd["fc.bias"][c : c + 1])]))


# ------------------------------------------------------------------------------------ weight table
def test_weight_table_columns_and_listed_integers(tmp_path: Path) -> None:
    table = weight_table(write_hf_folder(tmp_path / "hf"))
    assert list(table.columns) == [*WEIGHT_COLUMNS, *SUMMARY_COLUMNS]
    assert table["n"].dtype == "Int64" and table["mean"].dtype == "float64"
    pos = table[table.param == "position_ids"].iloc[0]
    assert (pos["layer"], pos["shape"], pos["dtype"]) == ("model", "12", "int64")
    assert pos[list(SUMMARY_COLUMNS)].isna().all()  # listed, not summarised


def test_hf_folder_table_against_numpy(tmp_path: Path) -> None:
    tensors = hf_tensors()
    table = weight_table(write_hf_folder(tmp_path / "hf", tensors), progress=True)
    assert [f"{layer}.{param}" for layer, param in zip(table.layer, table.param)] == _natural_order(tensors)
    for row in table.itertuples():
        t = tensors[f"{row.layer}.{row.param}"]
        assert row.dtype == str(t.dtype)[6:] and row.shape == "x".join(map(str, t.shape))
        if t.is_floating_point():
            _assert_moments(row._asdict(), _f64(t))


def test_every_format_gives_the_same_table(tmp_path: Path) -> None:
    sd = torchvision_state_dict()
    save_file(sd, str(tmp_path / "m.safetensors"))
    write_torchvision_pth(tmp_path / "m.pth", sd)
    np.savez(tmp_path / "m.npz", **{k: v.numpy() for k, v in sd.items()})
    model = SmallConvNet()
    model.load_state_dict(sd)
    tables = [weight_table(tmp_path / f) for f in ("m.pth", "m.npz")]
    tables.append(weight_table(model, buffers=True))
    tables.append(weight_table(open_weights(tmp_path / "m.safetensors")).set_index(["layer", "param"]).loc[
        [tuple(k.rsplit(".", 1)) for k in sd]].reset_index())  # safetensors: natural order
    for t in tables[1:]:
        pd.testing.assert_frame_equal(t, tables[0])
    params_only = weight_table(model)
    assert len(params_only) == len(list(model.parameters())) < len(tables[0])


# ------------------------------------------------------------------------------------ value change
def _literal_change(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    nd = math.sqrt(sum((y - x) ** 2 for x, y in zip(a, b)))
    dot = sum(x * y for x, y in zip(a, b))
    flips = sum(1 for x, y in zip(a, b) if (x > 0 > y) or (x < 0 < y))
    return nd / na, dot / (na * nb), flips / a.size


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_value_change_against_a_literal_loop(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3001, generator=g).to(dtype)
    b = (a.double() + 0.3 * torch.randn(3001, generator=g, dtype=torch.float64)).to(dtype)
    a[::7] = 0  # zeros never count as flips
    monkeypatch.setattr(weightstats, "CHUNK_ELEMENTS", 500)
    got = value_change(a, b)
    want = _literal_change(a.double().numpy(), b.double().numpy())
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_value_change_of_zero_tensors_and_shapes() -> None:
    z = torch.zeros(4)
    assert value_change(z, z)[0] == 0.0 and math.isnan(value_change(z, z)[1])
    assert value_change(z, torch.ones(4))[0] == math.inf
    nan = torch.tensor([1.0, math.nan])
    assert all(math.isnan(v) for v in value_change(nan, torch.ones(2))[:2])
    with pytest.raises(NndistError, match="one shape, got 4 and 2x2"):
        value_change(z, torch.zeros(2, 2))


# ------------------------------------------------------------------------------------ compare
def test_planted_change_ranks_first_with_relative_change_one_half(tmp_path: Path) -> None:
    a, b, _ = _planted(tmp_path)
    table = compare([a, b], progress=True)
    assert list(table.columns) == [*COMPARE_COLUMNS, "status"]
    top = table.iloc[0]
    assert (top["tensor"], top["status"]) == ("lm_head.weight", "compared")
    # the two norms' sums are exact scalings by 1/4 and 9/4, so the ratio is 1/2 to rounding
    assert abs(top["rel_change"] - 0.5) < 1e-12
    assert abs(top["cosine"] - 1.0) < 1e-12 and top["sign_flip"] == 0.0
    assert top["std_b"] == pytest.approx(1.5 * top["std_a"], rel=1e-12)
    assert top["kurtosis_b"] == pytest.approx(top["kurtosis_a"], abs=1e-9)
    unchanged = table[(table.status == "compared") & (table.tensor != "lm_head.weight")]
    assert (unchanged["rel_change"] == 0).all() and (unchanged["w1"] == 0).all() and (unchanged["ks"] == 0).all()


def test_planted_negation_flips_every_sign(tmp_path: Path) -> None:
    a, b, tensors = _planted(tmp_path, negate=True)
    table = compare([a, b])
    assert table.iloc[0]["tensor"] == "model.layers.1.self_attn.q_proj.weight"
    row = table.set_index("tensor").loc["model.layers.1.self_attn.q_proj.weight"]
    q = tensors["model.layers.1.self_attn.q_proj.weight"]
    assert row["sign_flip"] == float((q != 0).double().mean())  # zeros have no sign
    assert row["rel_change"] == pytest.approx(2.0, rel=1e-12) and row["cosine"] == pytest.approx(-1.0, abs=1e-12)
    assert row["mean_b"] == pytest.approx(-row["mean_a"], abs=1e-15) and row["kurtosis_b"] == pytest.approx(
        row["kurtosis_a"], abs=1e-9)


def test_one_sided_mismatched_and_integer_tensors_are_listed_in_rank_order(tmp_path: Path) -> None:
    a, b, tensors = _planted(tmp_path)
    table = compare([a, b])
    assert table["status"].tolist() == sorted(table["status"], key=weightstats.COMPARE_STATUSES.index)
    by = table.set_index("tensor")
    k = by.loc["model.layers.0.self_attn.k_proj.weight"]
    assert (k["status"], k["shape_a"], k["shape_b"]) == ("shape mismatch", "8x16", "16x8")
    assert k["w1"] == 0 and math.isnan(k["rel_change"])  # same values, other shape
    norm = by.loc["model.norm.weight"]
    assert (norm["status"], norm["shape_a"], norm["mean_a"]) == ("only in a", "16", 1.0)
    assert pd.isna(norm["shape_b"]) and math.isnan(norm["mean_b"]) and math.isnan(norm["w1"])
    extra = by.loc["model.extra.bias"]
    assert (extra["status"], extra["mean_b"]) == ("only in b", 0.0) and pd.isna(extra["shape_a"])
    assert by.loc["model.position_ids", "status"] == "not summarised"
    assert set(table["tensor"]) == set(tensors) | {"model.extra.bias"}  # nothing dropped
    compared = table[table.status == "compared"]["rel_change"].tolist()
    assert compared == sorted(compared, reverse=True)


def test_distribution_shift_comes_from_the_summaries(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(5)
    a = {"w": torch.randn(20000, generator=g)}
    b = {"w": torch.randn(20000, generator=g) * 1.2 + 0.1}
    row = compare([a, b]).iloc[0]
    sa, sb = summarize(a["w"]), summarize(b["w"])
    assert row["w1"] == float(wasserstein(sa, sb)) and row["ks"] == float(ks_distance(sa, sb))
    exact_w1 = scipy.stats.wasserstein_distance(a["w"].numpy(), b["w"].numpy())
    bound = 2.0**-6 * (a["w"].abs().mean() + b["w"].abs().mean())  # stats.wasserstein's error bound
    assert abs(row["w1"] - exact_w1) <= bound
    assert row["ks"] <= scipy.stats.ks_2samp(a["w"].numpy(), b["w"].numpy()).statistic + 1e-12


def test_zero_reference_ranks_first_as_infinite_change() -> None:
    a = {"bias": torch.zeros(4), "w": torch.ones(4)}
    b = {"bias": torch.full((4,), 0.1), "w": torch.full((4,), 3.0)}
    table = compare([a, b])
    assert table["tensor"].tolist() == ["bias", "w"] and table["rel_change"].tolist() == [math.inf, 2.0]


@pytest.mark.parametrize("against, pairs", [("first", [("A", "B"), ("A", "C")]), ("previous", [("A", "B"), ("B", "C")])])
def test_three_sources_pair_against_first_or_previous(against: str, pairs: list[tuple[str, str]]) -> None:
    w = torch.arange(-50.0, 51.0) / 64  # multiples of 1/64: x2 and x6 are exact
    steps = [{"w": w, "only_a": w}, {"w": w * 2}, {"w": w * 6}]
    table = compare(steps, labels=["A", "B", "C"], against=against)
    assert list(table.columns) == ["a", "b", *COMPARE_COLUMNS, "status"]
    assert list(dict.fromkeys(zip(table.a, table.b))) == pairs
    rel = table[table.tensor == "w"]["rel_change"].tolist()
    assert rel == pytest.approx([1.0, 5.0] if against == "first" else [1.0, 2.0], rel=1e-12)
    assert table[table.tensor == "only_a"]["status"].tolist() == ["only in a"] * (2 if against == "first" else 1)


def test_compare_across_formats_matches_prefixed_names(tmp_path: Path) -> None:
    sd = torchvision_state_dict()
    save_file(sd, str(tmp_path / "plain.safetensors"))
    table = compare([write_torchvision_pth(tmp_path / "ddp.pth", sd), tmp_path / "plain.safetensors"])
    assert set(table["status"]) == {"compared", "not summarised"}
    assert (table.loc[table.status == "compared", "rel_change"] == 0).all()


def test_compare_labels_and_bad_arguments() -> None:
    a = {"w": torch.ones(2)}
    with pytest.raises(NndistError, match="two or more weights sources"):
        compare([a])
    with pytest.raises(NndistError, match="against must be 'first' or 'previous'"):
        compare([a, a], against="last")
    with pytest.raises(NndistError, match="3 labels for 2 sources"):
        compare([a, a], labels=["x", "y", "z"])
    assert compare([a, a, a])[["a", "b"]].iloc[0].tolist() == ["state dict (1)", "state dict (2)"]


def test_tensor_summaries_for_histograms(tmp_path: Path) -> None:
    tensors = hf_tensors()
    folder = write_hf_folder(tmp_path / "hf", tensors)
    got = tensor_summaries(folder, ["lm_head.weight", "model.position_ids"])
    assert list(got) == ["lm_head.weight"]
    assert float(got["lm_head.weight"].std) == pytest.approx(float(tensors["lm_head.weight"].double().std(
        unbiased=False)), rel=MOMENT_RTOL)
    assert len(tensor_summaries(folder)) == len(tensors) - 1


# ------------------------------------------------------------------------------------ output
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_table_round_trips(tmp_path: Path, suffix: str) -> None:
    table = weight_table(torchvision_state_dict(), per_channel=True)
    path = write_table(table, tmp_path / f"out{suffix}")
    back = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    assert len(back) == len(table) and list(back.columns) == list(table.columns)
    np.testing.assert_allclose(back["mean"].to_numpy(float), table["mean"].to_numpy(float), rtol=1e-15)
    with pytest.raises(NndistError, match=r"out\.txt: tables are written as \.csv or \.parquet"):
        write_table(table, tmp_path / "out.txt")
