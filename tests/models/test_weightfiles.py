"""Weights files as lazy tensor sources: every format, names, dtypes, and every bad input."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from weights_fixtures import (
    SmallConvNet,
    hf_tensors,
    torchvision_state_dict,
    write_hf_folder,
    write_torchvision_pth,
)

from nndist.models import weightfiles
from nndist.errors import NndistError
from nndist.models.weightfiles import (
    MappingSource,
    ModuleSource,
    TensorInfo,
    as_source,
    is_summarised_dtype,
    open_weights,
    resolve_weight_files,
)


def _natural(names: list[str]) -> list[str]:
    return sorted(names, key=weightfiles._natural_key)


# ------------------------------------------------------------------------------------ formats
def test_safetensors_file_lists_shapes_and_dtypes_then_reads_each(tmp_path: Path) -> None:
    tensors = hf_tensors()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with open_weights(tmp_path / "model.safetensors") as src:
        assert src.names() == _natural(list(tensors))
        for name, t in tensors.items():
            assert src.infos[name] == TensorInfo(name, tuple(t.shape), str(t.dtype)[6:], tmp_path / "model.safetensors")
            got = src.read(name)
            assert got.dtype == t.dtype and torch.equal(got, t)
        assert src.prefix == "" and src.index is None


def test_hf_folder_and_its_index_read_every_shard(tmp_path: Path) -> None:
    tensors = hf_tensors()
    folder = write_hf_folder(tmp_path / "hf", tensors)
    shards = [folder / "model-00001-of-00002.safetensors", folder / "model-00002-of-00002.safetensors"]
    for given in (folder, folder / "model.safetensors.index.json"):
        with open_weights(given) as src:
            assert src.files == shards
            assert src.index == folder / "model.safetensors.index.json"
            assert src.names() == _natural(list(tensors))  # layers.0 from shard 1, layers.1 from shard 2
            assert {src.infos[n].file for n in src.names()} == set(shards)
            assert src.infos["model.layers.0.self_attn.q_proj.weight"].dtype == "bfloat16"
            assert src.infos["model.layers.1.mlp.down_proj.weight"].dtype == "float16"
            for name, t in tensors.items():
                assert torch.equal(src.read(name), t)
            assert src.metadata == {"format": "pt"}


def test_folder_resolution_order(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    torch.save({"a": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    assert resolve_weight_files(tmp_path) == ([tmp_path / "model.safetensors"], None)
    (tmp_path / "model.safetensors").unlink()
    assert resolve_weight_files(tmp_path) == ([tmp_path / "pytorch_model.bin"], None)
    (tmp_path / "pytorch_model.bin").unlink()
    np.savez(tmp_path / "only.npz", a=np.ones(2))
    assert resolve_weight_files(tmp_path) == ([tmp_path / "only.npz"], None)


def test_pth_index_folder_of_bin_shards(tmp_path: Path) -> None:
    torch.save({"a.weight": torch.ones(3)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"b.weight": torch.zeros(2)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    weight_map = {"a.weight": "pytorch_model-00001-of-00002.bin", "b.weight": "pytorch_model-00002-of-00002.bin"}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with open_weights(tmp_path) as src:
        assert src.names() == ["a.weight", "b.weight"]
        assert torch.equal(src.read("b.weight"), torch.zeros(2))


def test_torchvision_pth_nested_state_dict_and_module_prefix(tmp_path: Path) -> None:
    sd = torchvision_state_dict()
    path = write_torchvision_pth(tmp_path / "resnet.pth", sd)
    with open_weights(path) as src:
        assert src.prefix == "module."
        assert src.names() == list(sd)  # the stored (module) order, prefix stripped
        assert src.infos["bn1.num_batches_tracked"].dtype == "int64"
        assert not src.infos["bn1.num_batches_tracked"].summarised
        for name, t in sd.items():
            assert torch.equal(src.read(name), t)
    with open_weights(path, strip_prefix=False) as src:
        assert src.names() == [f"module.{k}" for k in sd]


def test_prefixes_stripped_only_when_every_name_has_them() -> None:
    both = MappingSource({"module._orig_mod.a": torch.ones(1), "module._orig_mod.b.c": torch.ones(1)})
    assert both.prefix == "module._orig_mod." and both.names() == ["a", "b.c"]
    some = MappingSource({"module.a": torch.ones(1), "b": torch.ones(1)})
    assert some.prefix == "" and some.names() == ["module.a", "b"]
    only = MappingSource({"module.": torch.ones(1)})  # stripping would leave an empty name
    assert only.names() == ["module."]


def test_nested_twice_and_explicit_key(tmp_path: Path) -> None:
    sd = {"w": torch.arange(4.0)}
    torch.save({"model": {"state_dict": sd}, "optimizer": {}}, tmp_path / "a.pt")
    with open_weights(tmp_path / "a.pt") as src:
        assert src.names() == ["w"]
    ema = {"w": torch.arange(4.0) * 2}
    torch.save({"state_dict": sd, "state_dict_ema": ema, "args": __import__("argparse").Namespace(lr=0.1)},
               tmp_path / "b.pth")
    with open_weights(tmp_path / "b.pth") as src:
        assert torch.equal(src.read("w"), sd["w"])
    with open_weights(tmp_path / "b.pth", key="state_dict_ema") as src:
        assert torch.equal(src.read("w"), ema["w"])
    with pytest.raises(NndistError, match=r"b\.pth: has no entry 'ema' at the top level \(its keys: state_dict"):
        open_weights(tmp_path / "b.pth", key="ema")


def test_legacy_torch_format_loaded_whole(tmp_path: Path) -> None:
    torch.save({"x": torch.arange(5.0)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with open_weights(tmp_path / "old.pt") as src:
        assert torch.equal(src.read("x"), torch.arange(5.0))


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_headers_then_members(tmp_path: Path, compressed: bool) -> None:
    arrays = {"conv.weight": np.random.default_rng(0).standard_normal((4, 3, 2)).astype(np.float32),
              "fc.bias": np.arange(3, dtype=np.float64), "steps": np.array(7, dtype=np.int32),
              "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3))}
    (np.savez_compressed if compressed else np.savez)(tmp_path / "w.npz", **arrays)
    with open_weights(tmp_path / "w.npz") as src:
        assert src.names() == list(arrays)
        assert [(i.shape, i.dtype) for i in src] == [((4, 3, 2), "float32"), ((3,), "float64"), ((), "int32"),
                                                     ((2, 3), "float64")]
        for name, a in arrays.items():
            np.testing.assert_array_equal(src.read(name).numpy(), a)


def test_remapping_keeps_earlier_tensors_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensors = {f"t{i}": torch.full((100,), float(i)) for i in range(5)}
    save_file(tensors, str(tmp_path / "a.safetensors"))
    torch.save(tensors, tmp_path / "a.pt")
    monkeypatch.setattr(weightfiles, "REMAP_BYTES", 1)  # a fresh mapping for every read
    for path in (tmp_path / "a.safetensors", tmp_path / "a.pt"):
        with open_weights(path) as src:
            held = [src.read(n) for n in src.names()]
        for i, t in enumerate(held):  # alive after later remaps and after close
            assert torch.equal(t, tensors[f"t{i}"])


def test_module_source_parameters_or_state_dict() -> None:
    model = SmallConvNet()
    params = ModuleSource(model)
    assert params.names() == [n for n, _ in model.named_parameters()]
    with_buffers = as_source(model, buffers=True)
    assert with_buffers.names() == list(model.state_dict())
    assert torch.equal(with_buffers.read("bn1.running_var"), model.bn1.running_var)
    assert not with_buffers.read("fc.weight").requires_grad


def test_mapping_source_takes_arrays_and_refuses_other_values() -> None:
    src = as_source({"a": np.ones(3, dtype=np.float16), "b": torch.zeros(2, dtype=torch.bfloat16)})
    assert [i.dtype for i in src] == ["float16", "bfloat16"]
    with pytest.raises(NndistError, match="entry 'c' is a int, not a tensor"):
        MappingSource({"c": 3})
    with pytest.raises(NndistError, match="cannot read weights from a int"):
        as_source(3)


@pytest.mark.parametrize(
    "dtype, summarised",
    [("float32", True), ("bfloat16", True), ("float16", True), ("float64", True), ("float8_e4m3fn", True),
     ("int64", False), ("bool", False), ("uint8", False), ("<U5", False), ("complex64", False)],
)
def test_which_dtypes_are_summarised(dtype: str, summarised: bool) -> None:
    assert is_summarised_dtype(dtype) is summarised


# ------------------------------------------------------------------------------------ bad input
def _one_line(exc: pytest.ExceptionInfo[NndistError], *fragments: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


class _Payload:
    """Unpickling this creates the file ``target``: proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("container", ["zip", "raw_pickle", "npz"])
def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path, container: str) -> None:
    target = tmp_path / "pwned"
    payload = {"conv.weight": torch.ones(2), "extra": _Payload(target)}
    if container == "zip":
        path = tmp_path / "evil.pth"
        torch.save(payload, path)
    elif container == "raw_pickle":
        path = tmp_path / "evil.bin"
        path.write_bytes(pickle.dumps(payload))
    else:
        path = tmp_path / "evil.npz"
        arr = np.empty(1, dtype=object)
        arr[0] = _Payload(target)
        np.savez(path, w=np.ones(2), x=arr)
    # the payload is live: plain pickle.loads would create the file
    assert not target.exists()
    with pytest.raises(NndistError) as exc:
        open_weights(path)
    _one_line(exc, str(path), "refused", "nothing was run")
    assert not target.exists()


def _write_bad(tmp_path: Path, case: str) -> tuple[Path, tuple[str, ...]]:
    """Writes a bad input; returns the path to open and fragments its message must hold."""
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.randn(1000), "b": torch.randn(10)}, str(good))
    if case == "truncated safetensors":
        p = tmp_path / "cut.safetensors"
        p.write_bytes(good.read_bytes()[:-100])
        return p, ("truncated or corrupt", "download it again")
    if case == "corrupt safetensors header":
        p = tmp_path / "bad.safetensors"
        data = bytearray(good.read_bytes())
        data[8:20] = b"not json at!"
        p.write_bytes(bytes(data))
        return p, ("not a readable safetensors file", "truncated or corrupt")
    if case == "truncated pth":
        p = tmp_path / "cut.pth"
        torch.save({"a": torch.randn(100)}, p)
        p.write_bytes(p.read_bytes()[:-300])
        return p, ("not a readable PyTorch checkpoint", "download it again")
    if case == "truncated npz":
        p = tmp_path / "cut.npz"
        np.savez(p, a=np.ones(100))
        p.write_bytes(p.read_bytes()[:50])
        return p, ("not a readable .npz file", "write it again")
    if case.startswith("empty "):
        p = tmp_path / f"empty{case.split()[1]}"
        p.write_bytes(b"")
        return p, ("is empty (0 bytes)", "download it again")
    if case == "index names a missing shard":
        folder = write_hf_folder(tmp_path / "hf")
        (folder / "model-00002-of-00002.safetensors").unlink()
        return folder, ("model.safetensors.index.json", "names shard model-00002-of-00002.safetensors",
                        "download every shard the index lists (2 files)")
    if case == "index names a tensor its shard lacks":
        folder = write_hf_folder(tmp_path / "hf")
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        index["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors"
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        return folder / "model.safetensors.index.json", ("'model.extra.weight'", "download them again together")
    if case == "corrupt index":
        folder = write_hf_folder(tmp_path / "hf")
        (folder / "model.safetensors.index.json").write_text("{not json")
        return folder, ("not a readable index", "download it again")
    if case == "folder with no weights":
        folder = tmp_path / "run"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        return folder, ("folder holds no weights", "pass the checkpoint file")
    if case == "several files, no index":
        folder = tmp_path / "two"
        folder.mkdir()
        save_file({"a": torch.ones(1)}, str(folder / "before.safetensors"))
        save_file({"a": torch.ones(1)}, str(folder / "after.safetensors"))
        return folder, ("several weights files and no index.json", "pass the file you mean")
    if case == "name in two shards":
        folder = tmp_path / "dup"
        folder.mkdir()
        save_file({"a": torch.ones(1)}, str(folder / "model-00001-of-00002.safetensors"))
        save_file({"a": torch.ones(1)}, str(folder / "model-00002-of-00002.safetensors"))
        return folder, ("tensor 'a' is stored twice", "keep one copy")
    if case == "no tensors":
        p = tmp_path / "empty-dict.safetensors"
        save_file({}, str(p))
        return p, ("holds no tensors", "pass the checkpoint that holds the weights")
    if case == "no state dict":
        p = tmp_path / "opt.pt"
        torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, p)
        return p, ("holds no state dict (its keys: epoch, optimizer)", "key=")
    if case == "unknown suffix":
        p = tmp_path / "weights.h5"
        p.write_bytes(b"\x89HDF")
        return p, ("unknown weights file type '.h5'", ".safetensors")
    if case == "missing path":
        return tmp_path / "nope.safetensors", ("does not exist", "pass a .safetensors")
    raise AssertionError(case)


BAD_CASES = [
    "truncated safetensors", "corrupt safetensors header", "truncated pth", "truncated npz",
    "empty .safetensors", "empty .pth", "empty .npz", "index names a missing shard",
    "index names a tensor its shard lacks", "corrupt index", "folder with no weights",
    "several files, no index", "name in two shards", "no tensors", "no state dict", "unknown suffix", "missing path",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_naming_the_file_and_the_fix(tmp_path: Path, case: str) -> None:
    path, fragments = _write_bad(tmp_path, case)
    with pytest.raises(NndistError) as exc:
        open_weights(path)
    msg = _one_line(exc, *fragments)
    assert str(path) in msg or str(path.parent) in msg


def test_read_of_unknown_name_names_the_source(tmp_path: Path) -> None:
    save_file({"a": torch.ones(1)}, str(tmp_path / "m.safetensors"))
    with open_weights(tmp_path / "m.safetensors") as src, pytest.raises(NndistError, match="no tensor named 'b'"):
        src.read("b")


def test_npz_of_unsupported_version_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "odd.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.npy", b"\x93NUMPY\x09\x00" + b"\x00" * 16)
    with pytest.raises(NndistError, match="not a readable .npz file"):
        open_weights(p)
