"""Every bad input gets one clear line (naming the bad path or value and the fix), exit status 2,
no traceback and no half-written output; inputs that are legitimate but extreme (NaN, Inf, a
diverging init, a model in train mode) are handled without crashing.

Set ``NNDIST_MESSAGES_LOG=FILE`` to collect every error line the CLI printed (for release notes).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nndist
from nndist.cli import COMMANDS, main
from nndist.errors import NndistError
from nndist.models import create_model, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY_EVAL = ["--device", "cpu", "--no-progress"]


# --------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNDIST_CACHE", str(tmp_path / "cache"))




def _png(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def make_folder(root: Path, size: int = 32, per_class: dict[str, int] | None = None) -> Path:
    """``root/{train,test}/{a,b}/NN.png``: random ``size`` x ``size`` RGB images."""
    per_class = per_class or {"train": 8, "test": 5}
    seed = 0
    for split, n in per_class.items():
        for cls in ("a", "b"):
            for i in range(n):
                _png(root / split / cls / f"{i:02d}.png", size, seed)
                seed += 1
    return root


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


BAD_FILES = {
    # kind: (file name, content, words the message must contain)
    "truncated_jpeg": ("bad.jpg", _jpeg_bytes()[:150], "corrupt image"),
    "zero_byte": ("bad.png", b"", "zero-byte"),
    "text_as_jpg": ("bad.jpg", b"this is text, not a picture\n", "not an image"),
}


def _log(argv: list[str], line: str) -> None:
    path = os.environ.get("NNDIST_MESSAGES_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"argv": argv, "message": line}) + "\n")


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str], *must: str) -> str:
    """Runs the CLI in-process; asserts exit 2 and one error line holding every string of ``must``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith(f"nndist {argv[0]}: error: "), line
    for text in must:
        assert str(text) in line, (text, line)
    _log([str(a) for a in argv], line)
    return line


def assert_nothing_written(out: Path) -> None:
    """``out`` is absent or an empty directory: no manifest, table, checkpoint or report."""
    if out.exists():
        leftovers = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        assert leftovers == [], leftovers


def reproduce_argv(data: str | Path, out: Path, *extra: str) -> list[str]:
    # Small defaults; flags in ``extra`` come later and win.
    return ["reproduce", "--data", str(data), "--epochs", "1", "--inits", "zeros", "--batch-size", "16",
            "--train-samples", "32", "--valid-samples", "10",
            "--device", "cpu", "--no-progress", "--out", str(out), *extra]


def evaluate_argv(data: str | Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", "paper_cnn", "--data", str(data), *TINY_EVAL, *extra]


def gradients_argv(out: Path, *extra: str) -> list[str]:
    return ["gradients", "--model", "paper_cnn", "--data", "shapes", "--samples", "8", "--batch-size", "8",
            "--no-per-sample", *TINY_EVAL, "--out", str(out), *extra]


# --------------------------------------------------------------------------------------------
# Image folders


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_image_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    name, content, words = BAD_FILES[kind]
    folder = make_folder(tmp_path / "imgs")
    (folder / "test" / "b" / name).write_bytes(content)
    cli_error(capsys, evaluate_argv(folder), folder / "test" / "b" / name, words, "--skip-bad-images")
    out = tmp_path / "run"
    cli_error(capsys, reproduce_argv(folder, out, "--train-samples", "all", "--valid-samples", "all"),
              name, words, "--skip-bad-images")
    assert_nothing_written(out)


def test_empty_class_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_folder(tmp_path / "imgs")
    (folder / "test" / "c_empty").mkdir()
    cli_error(capsys, evaluate_argv(folder), folder / "test" / "c_empty", "has no images", "--skip-bad-images")


@pytest.mark.parametrize("split", ["train", "test"])
def test_missing_split(tmp_path: Path, capsys: pytest.CaptureFixture[str], split: str) -> None:
    import shutil

    folder = make_folder(tmp_path / "imgs")
    shutil.rmtree(folder / split)
    out = tmp_path / "run"
    cli_error(capsys, reproduce_argv(folder, out, "--train-samples", "all", "--valid-samples", "all"),
              folder / split, "does not exist", "train/ and test/")
    assert_nothing_written(out)
    if split == "test":
        cli_error(capsys, evaluate_argv(folder), folder / split, "does not exist")


def _folder_with_every_kind_of_bad_file(root: Path) -> tuple[Path, set[str]]:
    folder = make_folder(root)
    bad = set()
    for split in ("train", "test"):
        for i, (name, content, _) in enumerate(BAD_FILES.values()):
            (folder / split / "a" / f"{i}{name}").write_bytes(content)
            bad.add(f"a/{i}{name}")
        (folder / split / "c_empty").mkdir()
    return folder, bad | {"c_empty/"}


def test_skip_bad_images_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, bad = _folder_with_every_kind_of_bad_file(tmp_path / "imgs")
    assert main(evaluate_argv(folder, "--skip-bad-images")) == 0
    out = capsys.readouterr().out
    assert "n=10" in out and f"skipped {len(bad)} bad file(s)" in out, out


def test_skip_bad_images_reproduce_lists_them_in_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, bad = _folder_with_every_kind_of_bad_file(tmp_path / "imgs")
    out = tmp_path / "run"
    # --no-report: figures and the report (most of a tiny run's time) are tested in test_reproduce.py.
    argv = reproduce_argv(folder, out, "--train-samples", "all", "--valid-samples", "all", "--skip-bad-images", "--no-report")
    assert main(argv) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    # Both splits' bad files, each listed once per split; the count is the list's length.
    assert sorted(manifest["bad_files"]) == sorted(list(bad) * 2)
    assert manifest["finished"] and manifest["runs"]["zeros"]["status"] == "done"
    assert (out / "checkpoints" / "zeros" / "after.safetensors").is_file()


@pytest.mark.parametrize("size", [16, 64])
def test_image_size_the_model_cannot_take(tmp_path: Path, capsys: pytest.CaptureFixture[str], size: int) -> None:
    folder = make_folder(tmp_path / "imgs", size=size)
    out = tmp_path / "run"
    cli_error(capsys, reproduce_argv(folder, out, "--train-samples", "all", "--valid-samples", "all"),
              "3x32x32", f"got 3x{size}x{size}", "resize")
    assert_nothing_written(out)
    # evaluate can resize: the suggested fix works.
    cli_error(capsys, evaluate_argv(folder), "3x32x32", "--image-size 32")
    assert main(evaluate_argv(folder, "--image-size", "32")) == 0
    capsys.readouterr()


# --------------------------------------------------------------------------------------------
# Unknown names


def test_unknown_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    cli_error(capsys, reproduce_argv("shapes", out, "--inits", "orthogonal,glorot"), "'glorot'", "kaiming_normal", "zeros")
    assert_nothing_written(out)
    cli_error(capsys, ["weights", "paper_cnn", "--init", "glorot"], "'glorot'", "orthogonal")


def test_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    cli_error(capsys, reproduce_argv("shapes", out, "--model", "resnet9000"), "'resnet9000'", "paper_cnn", "cifar_resnet20")
    assert_nothing_written(out)
    cli_error(capsys, ["evaluate", "--model", "resnet9000", "--data", "shapes", *TINY_EVAL], "'resnet9000'", "paper_cnn")
    cli_error(capsys, gradients_argv(tmp_path / "g", "--model", "resnet9000"), "'resnet9000'", "paper_cnn")
    assert_nothing_written(tmp_path / "g")


def test_unknown_dataset_and_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_error(capsys, evaluate_argv("imagenet21k"), "'imagenet21k'", "cifar10", "shapes")
    missing = tmp_path / "nowhere"
    cli_error(capsys, evaluate_argv(missing), missing, "does not exist", "--data PATH")
    out = tmp_path / "run"
    cli_error(capsys, reproduce_argv(missing, out), missing, "does not exist")
    assert_nothing_written(out)


def test_unknown_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    cli_error(capsys, reproduce_argv("shapes", out, "--layers", "conv1,conv9", "--train-samples", "32",
                                     "--valid-samples", "10"), "conv9", "conv2", "fc1")
    assert_nothing_written(out)
    cli_error(capsys, gradients_argv(tmp_path / "g", "--layers", "conv9"), "conv9", "conv1")
    assert_nothing_written(tmp_path / "g")


# --------------------------------------------------------------------------------------------
# Checkpoints


def _state_dict() -> dict[str, torch.Tensor]:
    return dict(create_model("paper_cnn").state_dict())


def _weights_commands(tmp_path: Path, ckpt: Path) -> list[tuple[list[str], Path | None]]:
    out = tmp_path / "grad-run"
    return [
        (evaluate_argv("shapes", "--weights", str(ckpt), "--samples", "20"), None),
        (gradients_argv(out, "--weights", str(ckpt)), out),
    ]


def test_checkpoint_missing_and_unexpected_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = _state_dict()
    del sd["fc2.bias"]
    sd["fc3.weight"] = torch.zeros(2, 2)
    ckpt = tmp_path / "keys.pt"
    torch.save(sd, ckpt)
    for argv, out in _weights_commands(tmp_path, ckpt):
        cli_error(capsys, argv, ckpt, "missing keys: fc2.bias", "unexpected keys: fc3.weight", "--weights")
        if out is not None:
            assert_nothing_written(out)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_safetensors(tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    ckpt = save_checkpoint(tmp_path / "w.safetensors", create_model("paper_cnn"), {"model": "paper_cnn"})
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00\x01garbage" * 100)
    for argv, out in _weights_commands(tmp_path, ckpt):
        cli_error(capsys, argv, ckpt, "not a readable safetensors file", "corrupt")
        if out is not None:
            assert_nothing_written(out)
    cli_error(capsys, ["weights", ckpt], ckpt, "corrupt")


class _Touch:
    """Unpickling this would create ``path`` (via os.system or open)."""

    def __init__(self, path: Path, how: str) -> None:
        self.path, self.how = path, how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.path}",))
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("how", ["system", "open"])
@pytest.mark.parametrize("suffix", [".pt", ".th"])
def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, suffix: str) -> None:
    marker = tmp_path / "pwned"
    sd = _state_dict()
    ckpt = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": sd, "payload": _Touch(marker, how)}, ckpt)
    assert not marker.exists()
    for argv, out in [*_weights_commands(tmp_path, ckpt), (["weights", str(ckpt)], None)]:
        cli_error(capsys, argv, ckpt, "refused to load", "weights_only")
        assert not marker.exists(), "unpickling ran the payload"
        if out is not None:
            assert_nothing_written(out)


# --------------------------------------------------------------------------------------------
# Weights files: `nndist weights` and `nndist compare` without model code


def _bad_weights(tmp_path: Path, case: str) -> tuple[Path, tuple[str, ...]]:
    """A bad weights input of one kind, and the words its one-line error must hold."""
    from weights_fixtures import write_hf_folder

    if case == "truncated safetensors":
        folder = write_hf_folder(tmp_path / "hf")
        shard = folder / "model-00002-of-00002.safetensors"
        shard.write_bytes(shard.read_bytes()[:200])
        return folder, (str(shard), "truncated or corrupt", "download it again")
    if case == "index names a missing shard":
        folder = write_hf_folder(tmp_path / "hf")
        (folder / "model-00002-of-00002.safetensors").unlink()
        return folder / "model.safetensors.index.json", ("model.safetensors.index.json", "model-00002-of-00002.safetensors",
                                                         "missing", "download every shard")
    if case == "folder without weights":
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "README.md").write_text("no weights here\n")
        return tmp_path / "docs", (str(tmp_path / "docs"), "holds no weights", "pass the checkpoint file")
    if case == "empty file":
        (tmp_path / "empty.pth").write_bytes(b"")
        return tmp_path / "empty.pth", (str(tmp_path / "empty.pth"), "is empty (0 bytes)", "download it again")
    raise AssertionError(case)


WEIGHTS_CASES = ["truncated safetensors", "index names a missing shard", "folder without weights", "empty file"]


@pytest.mark.parametrize("case", WEIGHTS_CASES)
def test_bad_weights_input_is_one_line_for_weights_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    bad, words = _bad_weights(tmp_path, case)
    good = save_checkpoint(tmp_path / "good.safetensors", create_model("paper_cnn"), {"model": "paper_cnn"})
    cli_error(capsys, ["weights", bad, "--no-progress"], *words)
    out = tmp_path / "cmp"
    cli_error(capsys, ["compare", good, bad, "--out", out, "--no-progress"], *words)
    assert_nothing_written(out)


def test_compare_refuses_a_pickle_that_would_run_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.bin"
    torch.save({"state_dict": _state_dict(), "payload": _Touch(marker, "system")}, ckpt)
    out = tmp_path / "cmp"
    cli_error(capsys, ["compare", ckpt, "paper_cnn", "--out", out], ckpt, "refused to load", "nothing was run")
    assert not marker.exists(), "unpickling ran the payload"
    assert_nothing_written(out)


def test_weights_group_that_collides_and_other_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "clash.safetensors"
    save_file({"enc.weight": torch.ones(2), "enc.weight.scale": torch.ones(1)}, str(path))
    cli_error(capsys, ["weights", path, "--group", "layer", "--no-progress"], path, "'enc.weight'", "get the same name",
              "group='tensor'")
    cli_error(capsys, ["weights", path, "--group", "a..b"], "'a..b'", "model.layers.*")
    cli_error(capsys, ["weights", path, "--init", "orthogonal"], "--init applies to a model name")
    cli_error(capsys, ["weights", path, "--out", tmp_path / "t.txt"], "--out must end in .csv or .parquet")


def test_compare_bad_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = save_checkpoint(tmp_path / "good.safetensors", create_model("paper_cnn"), {"model": "paper_cnn"})
    out = tmp_path / "cmp"
    cli_error(capsys, ["compare", good, "resnet9000", "--out", out], "resnet9000", "neither a path nor a known model", "paper_cnn")
    cli_error(capsys, ["compare", good, tmp_path / "nope.safetensors", "--out", out], "nope.safetensors", "does not exist")
    cli_error(capsys, ["compare", good, "--out", out], "two or more sources", "A B")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"kind": "reproduce", "runs": {"zeros": {"init": "zeros", "seed": 0}}}))
    cli_error(capsys, ["compare", run, "--out", out], "checkpoints/zeros/before.safetensors is missing", "--resume")
    cli_error(capsys, ["compare", good, "paper_cnn", "--init", "glorot", "--out", out], "'glorot'", "orthogonal")
    assert_nothing_written(out)
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    cli_error(capsys, ["compare", good, "paper_cnn", "--out", out], out, "not empty", "--overwrite")
    assert (out / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------------------------
# Sizes and output directories


def test_samples_larger_than_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_folder(tmp_path / "imgs")  # 10 test images
    cli_error(capsys, evaluate_argv(folder, "--samples", "11"), "--samples 11", folder, "1 to 10")
    cli_error(capsys, evaluate_argv("shapes", "--samples", "1001"), "--samples 1001", "1 to 1000")
    cli_error(capsys, evaluate_argv("shapes", "--samples", "0"), "--samples 0", "1 to 1000")
    out = tmp_path / "g"
    cli_error(capsys, gradients_argv(out, "--samples", "1001"), "--samples 1001", "1 to 1000")
    assert_nothing_written(out)
    out = tmp_path / "run"
    cli_error(capsys, reproduce_argv(folder, out, "--train-samples", "17", "--valid-samples", "all"), "--train-samples 17", "1 to 16")
    assert_nothing_written(out)


def test_samples_not_a_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_error(capsys, evaluate_argv("shapes", "--samples", "lots"), "'lots'")
    cli_error(capsys, gradients_argv(tmp_path / "g", "--samples", "-3"), "-3")


def test_output_directory_not_writable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file\n")
    # A path under a regular file can never be created, even by root.
    out = blocker / "sub"
    cli_error(capsys, reproduce_argv("shapes", out), out, "not writable", "--out")
    cli_error(capsys, gradients_argv(out), out, "not writable", "--out")
    cli_error(capsys, ["weights", "paper_cnn", "--out", blocker / "w.csv"], blocker / "w.csv", "choose another output path")
    assert blocker.read_text() == "a regular file\n"
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        try:
            cli_error(capsys, reproduce_argv("shapes", locked / "run"), locked / "run", "not writable")
        finally:
            locked.chmod(0o700)


def test_output_directory_not_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    cli_error(capsys, reproduce_argv("shapes", out), out, "not empty", "--overwrite", "--resume")
    cli_error(capsys, gradients_argv(out), out, "not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    cli_error(capsys, ["reproduce", "--resume", tmp_path / "nowhere", "--no-progress"], "nowhere", "manifest.json")


# --------------------------------------------------------------------------------------------
# NaN, Inf, divergence, train mode


def test_emission_absorption_with_nan_input_gives_nan_without_crashing() -> None:
    torch.manual_seed(0)
    model = create_model("paper_cnn").eval()
    x = torch.randn(3, 3, 32, 32)
    x[1, 0, 5, 5] = float("nan")
    x[2, 1, 7, 7] = float("inf")
    res = nndist.emission_absorption(model, x, torch.tensor([0, 1, 2]))
    for name, r in res.items():
        assert r.emission.shape[0] == 3 and r.absorption.shape[0] == 3, name
        assert torch.isfinite(r.emission[0]).all() and torch.isfinite(r.absorption[0]).all(), name
    assert not torch.isfinite(res["fc2"].emission[1]).all()  # NaN propagates to the sample's results


@pytest.mark.parametrize("flag,value,words", [
    ("--std", "0.2,0,0.2", ["--std 0.2,0,0.2", "must be positive"]),
    ("--std", "0.2,0.2", ["--std 0.2,0.2", "3 channels"]),
    ("--mean", "nan,0,0", ["--mean nan,0,0", "finite"]),
])
def test_bad_normalisation(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, words: list[str]) -> None:
    out = tmp_path / "run"
    cli_error(capsys, reproduce_argv("shapes", out, "--train-samples", "32", "--valid-samples", "10", flag, value), *words)
    assert_nothing_written(out)


def test_nan_weights_are_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = create_model("paper_cnn")
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, :2] = float("nan")
        model.fc1.bias[3] = float("inf")
    ckpt = save_checkpoint(tmp_path / "nan.safetensors", model, {"model": "paper_cnn"})
    table_file = tmp_path / "w.csv"
    assert main(["weights", str(ckpt), "--out", str(table_file)]) == 0
    out = capsys.readouterr().out
    assert "non-finite" in out and "conv2.weight" in out and "fc1.bias" in out, out
    import pandas as pd

    table = pd.read_csv(table_file).set_index(["layer", "param"])
    assert table.loc[("conv2", "weight"), "nonfinite"] == 2
    assert table.loc[("fc1", "bias"), "nonfinite"] == 1
    assert table.loc[("conv1", "weight"), "nonfinite"] == 0


def test_diverged_init_is_recorded_not_fatal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = reproduce_argv("shapes", out, "--inits", "kaiming_normal,zeros", "--gain", "1e30",
                          "--train-samples", "64", "--valid-samples", "20", "--no-report")
    assert main(argv) == 0, capsys.readouterr().err
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    assert runs["kaiming_normal"]["status"] == "diverged" and runs["kaiming_normal"]["diverged_at_step"] == 0
    assert runs["zeros"]["status"] == "done"
    import pandas as pd

    loss = pd.read_parquet(out / "loss.parquet")
    assert np.isfinite(loss[loss["init"] == "zeros"]["loss"]).all()


def test_batchnorm_model_in_train_mode_is_measured_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = create_model("cifar_resnet20").train()
    with torch.no_grad():  # non-trivial running statistics, so train and eval mode differ
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    layers = ["conv1", "layer3.2.conv2", "linear"]
    with pytest.warns(UserWarning, match="train mode.*restored"):
        res = nndist.emission_absorption(model, x, y, layers=layers)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), f"{k} changed"
    expected = nndist.emission_absorption(model.eval(), x, y, layers=layers)
    for name in layers:
        torch.testing.assert_close(res[name].emission, expected[name].emission)
        torch.testing.assert_close(res[name].absorption, expected[name].absorption)


# --------------------------------------------------------------------------------------------
# Help, version, tracebacks


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(NndistError):
        main(["--debug", *evaluate_argv(tmp_path / "nowhere")])


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_help_has_examples(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"nndist {nndist.__version__}"


def test_installed_command() -> None:
    script = Path(sys.executable).with_name("nndist")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "nndist"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    done = subprocess.run([*cmd, "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"nndist {nndist.__version__}", done
    done = subprocess.run([*cmd, "evaluate", "--model", "resnet9000", "--data", "shapes"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done
    assert done.stderr.strip().count("\n") == 0 and "resnet9000" in done.stderr


def test_installed_command_weights_and_compare(tmp_path: Path) -> None:
    from weights_fixtures import write_hf_folder

    script = Path(sys.executable).with_name("nndist")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "nndist"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    folder = write_hf_folder(tmp_path / "hf")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"\x00" * 64)
    for argv in (["weights", str(folder)], ["compare", str(folder), "paper_cnn", "--out", str(tmp_path / "cmp")]):
        done = subprocess.run([*cmd, *argv], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done
        line = done.stderr.strip()
        assert "\n" not in line and "model-00001-of-00002.safetensors" in line and "corrupt" in line, line
    assert not (tmp_path / "cmp").exists()
