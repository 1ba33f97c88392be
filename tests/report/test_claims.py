"""The paper's claims on synthetic runs where each clearly holds, and where each clearly fails."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

import run_fixtures as rf
from nndist.report.claims import CLAIM_COLUMNS, evaluate_claims, write_claims
from nndist.results import load_run
from nndist.errors import NndistError

REPRODUCE_IDS = list(range(1, 13))
GRADIENT_IDS = [13, 14, 15]


def verdicts(df: pd.DataFrame) -> dict[int, str]:
    s = df[df["level"] == "summary"]
    return dict(zip(s["id"], s["verdict"]))


def summary(df: pd.DataFrame, cid: int) -> pd.Series:
    return df[(df["level"] == "summary") & (df["id"] == cid)].iloc[0]


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    return rf.make_reproduce_run(tmp_path_factory.mktemp("paper"), seeds=(0, 1), figures=False, n_values=300)


@pytest.fixture(scope="module")
def contrary_run(tmp_path_factory):
    return rf.make_reproduce_run(tmp_path_factory.mktemp("contrary"), paper=False, figures=False, n_values=300)


@pytest.fixture(scope="module")
def one_seed_run(tmp_path_factory):
    return rf.make_reproduce_run(tmp_path_factory.mktemp("one"), figures=False, n_values=150)


def copy_run(src, tmp_path):
    return shutil.copytree(src, tmp_path / "run")


@pytest.fixture(scope="module")
def paper_claims(paper_run):
    return evaluate_claims(paper_run)


def test_table_shape(paper_claims):
    assert list(paper_claims.columns) == CLAIM_COLUMNS
    s = paper_claims[paper_claims["level"] == "summary"]
    assert list(s["id"]) == list(range(1, 16))
    assert set(paper_claims["level"]) == {"summary", "detail"}
    assert set(paper_claims["verdict"]) <= {"holds", "fails", "mixed", "not measured"}
    assert (s["rule"].str.len() > 0).all()
    # every reproduce claim has detail rows, and a detail row per init/layer where it says so
    for cid in REPRODUCE_IDS:
        assert ((paper_claims["id"] == cid) & (paper_claims["level"] == "detail")).any(), cid
    assert "kaiming_uniform/conv3" in set(paper_claims[paper_claims["id"] == 6]["scope"])


def test_paper_run_all_reproduce_claims_hold(paper_claims):
    v = verdicts(paper_claims)
    assert {c: v[c] for c in REPRODUCE_IDS} == {c: "holds" for c in REPRODUCE_IDS}
    assert {c: v[c] for c in GRADIENT_IDS} == {c: "not measured" for c in GRADIENT_IDS}
    assert "needs a gradients run" in summary(paper_claims, 13)["numbers"]


def test_contrary_run_all_reproduce_claims_fail(contrary_run):
    v = verdicts(evaluate_claims(contrary_run))
    assert {c: v[c] for c in REPRODUCE_IDS} == {c: "fails" for c in REPRODUCE_IDS}


def test_thresholds_are_stated(paper_claims):
    rules = dict(zip(paper_claims["id"], paper_claims["rule"]))
    assert "0.1 x std" in rules[5]
    assert "1.5" in rules[10]
    assert "0.3" in rules[12]
    assert "Kruskal-Wallis" in rules[13]
    assert "exact identity" in rules[15]


def test_seed_flip_is_mixed(tmp_path, paper_run):
    run = copy_run(paper_run, tmp_path)

    def swap(df):  # in seed 1, orthogonal ends above everything: claim 1 flips between seeds
        sel = (df["seed"] == 1) & (df["init"] == "orthogonal") & (df["epoch"] == df["epoch"].max())
        df.loc[sel, "loss"] = 5.0
        return df

    rf.edit_table(run, "loss.parquet", swap)
    df = evaluate_claims(run)
    row = summary(df, 1)
    assert row["verdict"] == "mixed"
    assert "flips between seeds" in row["numbers"]
    det = df[(df["id"] == 1) & (df["level"] == "detail")]
    assert dict(zip(det["scope"], det["verdict"])) == {"seed 0": "holds", "seed 1": "fails"}


def test_split_across_layers_is_mixed(tmp_path, one_seed_run):
    run = copy_run(one_seed_run, tmp_path)

    def shift(df):  # conv2 weights of kaiming_normal end far from zero mean
        sel = (df["init"] == "kaiming_normal") & (df["layer"] == "conv2") & (df["stage"] == "after")
        df.loc[sel, "mean"] = df.loc[sel, "std"] * 0.9
        return df

    rf.edit_table(run, "weights.parquet", shift)
    df = evaluate_claims(run)
    assert summary(df, 5)["verdict"] == "mixed"
    det = df[(df["id"] == 5) & (df["level"] == "detail")].set_index("scope")["verdict"]
    assert det["kaiming_normal/conv2"] == "fails"
    assert det["kaiming_normal/conv1"] == "holds"
    assert "kaiming_normal/conv2 (fails)" in summary(df, 5)["numbers"]


def test_zeros_with_moving_weights_fails(tmp_path, one_seed_run):
    run = copy_run(one_seed_run, tmp_path)

    def move(df):
        sel = (df["init"] == "zeros") & (df["layer"] == "fc1") & (df["stage"] == "after")
        df.loc[sel, ["min", "max", "std"]] = [-0.01, 0.01, 0.005]
        return df

    rf.edit_table(run, "weights.parquet", move)
    df = evaluate_claims(run)
    det = df[(df["id"] == 3) & (df["level"] == "detail")].set_index("scope")["verdict"]
    assert det["zeros/fc1"] == "fails" and det["zeros (loss)"] == "holds"
    assert summary(df, 3)["verdict"] == "mixed"


def test_subset_of_inits(tmp_path):
    run = rf.make_reproduce_run(tmp_path, inits=("kaiming_normal", "xavier_normal"), figures=False, epochs=2, n_values=100)
    v = verdicts(evaluate_claims(run))
    assert v[1] == "not measured"  # needs orthogonal
    assert v[2] == "holds"
    assert v[3] == "not measured"  # needs zeros
    assert v[4] == "not measured"  # needs ones
    assert v[7] == "not measured"  # needs orthogonal
    assert v[6] == "holds"


def test_diverged_init_is_handled(tmp_path):
    run = rf.make_reproduce_run(tmp_path, diverged=("orthogonal", "xavier_uniform"), figures=False, epochs=2, n_values=100)
    df = evaluate_claims(run)
    v = verdicts(df)
    assert v[1] == "fails"
    assert "inf (diverged)" in summary(df, 1)["numbers"]
    assert v[7] == "not measured" and "diverged" in summary(df, 7)["numbers"]
    # ones is compared against the non-constant inits that did not diverge, which are named
    assert v[4] == "holds" and "left out: orthogonal, xavier_uniform" in summary(df, 4)["numbers"]
    # after-training claims skip diverged runs; before-training ones keep them
    scopes5 = set(df[df["id"] == 5]["scope"])
    assert not any(s.startswith("orthogonal/") for s in scopes5)
    assert any(s.startswith("orthogonal/") for s in set(df[df["id"] == 12]["scope"]))
    assert v[5] == v[6] == v[12] == "holds"


def test_missing_tables_are_not_measured(tmp_path, one_seed_run):
    run = copy_run(one_seed_run, tmp_path)
    for name in ("loss.parquet", "weights.parquet", "features.parquet"):
        (run / name).unlink()
    v = verdicts(evaluate_claims(run))
    assert set(v.values()) == {"not measured"}


@pytest.fixture(scope="module")
def grad_paper(tmp_path_factory):
    return rf.make_gradients_run(tmp_path_factory.mktemp("gpaper"), figures=False)


def test_gradients_claims_hold(grad_paper):
    df = evaluate_claims(grad_paper)
    v = verdicts(df)
    assert {c: v[c] for c in GRADIENT_IDS} == {13: "holds", 14: "holds", 15: "holds"}
    assert {c: v[c] for c in REPRODUCE_IDS} == {c: "not measured" for c in REPRODUCE_IDS}
    det = df[(df["id"] == 13) & (df["level"] == "detail")]
    assert set(det["scope"]) == {f"{l} ({s})" for l in ("layer1.0.conv1", "layer2.0.conv1")
                                 for s in ("emission", "absorption")}
    assert det["numbers"].str.contains("Kruskal-Wallis H = ").all()
    assert "max relative difference" in df[(df["id"] == 15) & (df["level"] == "detail")]["numbers"].iloc[0]


def test_gradients_claims_fail(tmp_path):
    run = rf.make_gradients_run(tmp_path, paper=False, figures=False)
    v = verdicts(evaluate_claims(run))
    assert v[13] == "fails" and v[14] == "fails"
    assert v[15] == "holds"  # an identity: it holds whatever the data


def test_broken_identity_is_caught(tmp_path):
    run = rf.make_gradients_run(tmp_path, figures=False)
    path = run / "per_sample" / "layer2.0.conv1.absorption.npy"
    np.save(path, np.load(path) * np.float32(1.01))
    df = evaluate_claims(run)
    det = df[(df["id"] == 15) & (df["level"] == "detail")].set_index("scope")
    assert det.loc["layer2.0.conv1", "verdict"] == "fails"
    assert det.loc["layer1.0.conv1", "verdict"] == "holds"
    assert summary(df, 15)["verdict"] == "mixed"
    rel = float(det.loc["layer2.0.conv1", "numbers"].split()[3])
    assert rel == pytest.approx(0.01 / 1.01, rel=1e-3)


@pytest.mark.parametrize("paper", [True, False])
def test_gradients_without_per_sample_arrays(tmp_path, paper):
    run = rf.make_gradients_run(tmp_path, per_sample=False, paper=paper, figures=False)
    df = evaluate_claims(run)
    v = verdicts(df)
    expected = "holds" if paper else "fails"
    assert (v[13], v[14], v[15]) == (expected, expected, "holds")
    assert df[(df["id"] == 13) & (df["level"] == "detail")]["numbers"].str.contains("CV of channel medians").all()


def test_write_claims(paper_run, paper_claims):
    path = write_claims(paper_run, paper_claims)
    assert path == paper_run / "claims.csv"
    back = pd.read_csv(path)
    assert list(back.columns) == CLAIM_COLUMNS and len(back) == len(paper_claims)
    assert not list(paper_run.glob(".claims.csv.tmp-*"))


def test_bad_run_dirs(tmp_path):
    with pytest.raises(NndistError, match="does not exist"):
        load_run(tmp_path / "nope")
    with pytest.raises(NndistError, match="manifest.json is missing"):
        evaluate_claims(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(NndistError, match="not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "other"}))
    with pytest.raises(NndistError, match="expected 'reproduce' or 'gradients'"):
        load_run(tmp_path)


def test_table_missing_a_column(tmp_path):
    run = rf.make_reproduce_run(tmp_path, inits=("orthogonal", "kaiming_normal"), figures=False, n_values=100)
    rf.edit_table(run, "loss.parquet", lambda df: df.drop(columns=["epoch"]))
    with pytest.raises(NndistError, match=r"loss.parquet lacks the column\(s\) epoch"):
        evaluate_claims(run)


def test_zeros_loss_stays_at_ln10_within_tolerance(paper_claims):
    det = paper_claims[(paper_claims["id"] == 3) & (paper_claims["scope"] == "zeros (loss)")].iloc[0]
    dev = float(det["numbers"].split("max |loss - ln 10| = ")[1].split(";")[0])
    assert dev < 0.05 and math.isfinite(dev)
