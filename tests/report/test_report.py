"""The HTML report and the ``nndist report`` command, on synthetic run directories."""

from __future__ import annotations

import re
import shutil

import pytest

import run_fixtures as rf
from nndist.cli import app as cli
from nndist.report import MAX_TABLE_ROWS, write_report

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def rep_run(tmp_path_factory):
    return rf.make_reproduce_run(tmp_path_factory.mktemp("rep"), seeds=(0, 1), diverged=("xavier_uniform",),
                                 epochs=2, n_values=100)


@pytest.fixture(scope="module")
def grad_run(tmp_path_factory):
    return rf.make_gradients_run(tmp_path_factory.mktemp("grad"), n_samples=100)


def test_reproduce_report(rep_run):
    path = write_report(rep_run)
    assert path == rep_run / "report.html"
    html = path.read_text(encoding="utf-8")
    for fig in ("figures/fig1_loss.png", "figures/fig2_weights.png", "figures/fig3_features.png",
                "figures/evolution.png"):
        assert f'src="{fig}"' in html
    assert html.count('class="claim-row"') == 15
    assert 'class="verdict v-holds"' in html and 'class="verdict v-not-measured"' in html
    assert '<tr class="diverged">' in html  # per-init status highlights the diverged run
    assert "exact identity" in html
    assert "lr</dt><dd>0.0001" in html  # configuration from manifest.json
    assert "Weights before and after training" in html and "std ratio" in html
    assert "not produced" not in html


def test_self_contained(rep_run):
    html = write_report(rep_run, embed_figures=True).read_text(encoding="utf-8")
    # The inlined plotting library holds URLs as strings (its logo link); the page's own markup none.
    markup = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.S)
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', markup)
    assert "@import" not in html and "<link" not in html
    assert html.count('src="data:image/png;base64,') == 4
    assert "default-src 'none'" in html  # the Content-Security-Policy forbids every other request


def test_gradients_report(grad_run):
    html = write_report(grad_run).read_text(encoding="utf-8")
    for layer in ("layer1.0.conv1", "layer2.0.conv1"):
        assert f'src="figures/fig4_{layer}.png"' in html
        assert f'src="figures/heatmap_{layer}.png"' in html
    assert "Channel statistics (Emission, Absorption)" in html
    assert "Modules not analysed" in html
    assert "exact identity" in html


def test_missing_figures_and_tables(tmp_path, grad_run):
    run = shutil.copytree(grad_run, tmp_path / "g")
    shutil.rmtree(run / "figures")
    (run / "gradients.parquet").unlink()
    html = write_report(run).read_text(encoding="utf-8")
    assert "figures/fig4_layer1.0.conv1.png: not produced" in html
    assert "Channel statistics (Emission, Absorption): not produced" in html
    assert "<img" not in html


def test_large_tables_are_truncated(tmp_path):
    run = rf.make_gradients_run(tmp_path, layers={"big": (200, 120)}, n_samples=20, figures=False)
    html = write_report(run).read_text(encoding="utf-8")
    assert f"Showing the first {MAX_TABLE_ROWS} of 320 rows; the full table is gradients.parquet." in html


def test_run_text_is_escaped(tmp_path):
    run = rf.make_reproduce_run(tmp_path, inits=("orthogonal", "kaiming_normal"), layers=(EVIL, "conv2"),
                                epochs=2, n_values=60)
    rf.edit_manifest(run, lambda m: m["config"].update({"note": '"><img src=x onerror=alert(2)>'}))
    html = write_report(run).read_text(encoding="utf-8")
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "onerror=alert" not in html.replace("&#34;&gt;&lt;img src=x onerror=alert", "")


def test_cli_report(rep_run, monkeypatch, capsys):
    assert cli.main(["report", str(rep_run)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == str(rep_run / "report.html")
    # Then the claims table: a header, one row per claim the run measured (1-12 for a reproduce
    # run), and one line naming the others.
    assert out[1].split() == ["#", "verdict", "claim"] and len(out) == 2 + 12 + 1
    assert [int(line.split()[0]) for line in out[2:14]] == list(range(1, 13))
    assert out[-1].startswith("not measured by this run: 13, 14, 15 (needs a gradients run")
    assert (rep_run / "claims.csv").is_file()


def test_weak_evidence_is_printed_with_the_verdict(tmp_path, capsys):
    run = rf.make_gradients_run(tmp_path, n_samples=60, figures=False)
    assert cli.main(["report", str(run)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip()[:2] in ("13", "14", "15")]
    assert "(60 images: weak)" in rows[0] and "(60 images: weak)" in rows[1]  # statistical claims
    assert "weak" not in rows[2]  # claim 15 is an exact identity


def test_cli_report_bad_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", ("report",))
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "manifest.json is missing" in err
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_help_has_examples(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", ("report",))
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    assert "examples:" in capsys.readouterr().out
