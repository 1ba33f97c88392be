"""Models: the paper CNN, CIFAR ResNets, checkpoints (safe loading) and evaluation."""

from __future__ import annotations

import hashlib
import os
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from nndist.errors import NndistError, UnknownNameError
from nndist.paper import PAPER_LAYERS
from nndist.models import (
    MODELS,
    create_model,
    evaluate,
    get_model_spec,
    list_models,
    load_model_spec,
    load_weights,
    save_checkpoint,
)

LOCAL_MODELS = [n for n in MODELS.names() if not n.startswith("torchvision:")]


# ------------------------------------------------------------------------------- paper CNN


def test_paper_cnn_layer_shapes() -> None:
    model = create_model("paper_cnn")
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
             for n, m in model.named_children()]
    try:
        out = model(torch.randn(4, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (4, 10)
    assert shapes["conv1"] == (4, 16, 32, 32)
    assert shapes["pool1"] == (4, 16, 16, 16)
    assert shapes["conv2"] == (4, 16, 16, 16)
    assert shapes["pool2"] == (4, 16, 8, 8)
    assert shapes["conv3"] == (4, 16, 8, 8)
    assert shapes["flatten"] == (4, 1024)
    assert shapes["fc1"] == (4, 512)
    assert shapes["fc2"] == (4, 10)


def test_paper_cnn_matches_table1() -> None:
    model = create_model("paper_cnn")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert list(layers) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    for name, cin in (("conv1", 3), ("conv2", 16), ("conv3", 16)):
        c = layers[name]
        assert (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) == (cin, 16, (3, 3), (1, 1), (1, 1))
    assert (layers["fc1"].in_features, layers["fc1"].out_features) == (1024, 512)
    assert (layers["fc2"].in_features, layers["fc2"].out_features) == (512, 10)
    assert set(PAPER_LAYERS) <= set(layers)
    expected = (3 * 16 * 9 + 16) + 2 * (16 * 16 * 9 + 16) + (1024 * 512 + 512) + (512 * 10 + 10)
    assert expected == 535_018
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 32, 32), (2, 3, 64, 64)])
def test_paper_cnn_wrong_input_size(shape: tuple[int, ...]) -> None:
    with pytest.raises(NndistError, match="3x32x32"):
        create_model("paper_cnn")(torch.randn(shape))


def test_paper_cnn_num_classes() -> None:
    assert create_model("paper_cnn", num_classes=3)(torch.randn(1, 3, 32, 32)).shape == (1, 3)


# ------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", LOCAL_MODELS)
def test_model_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    spec = get_model_spec(name)
    assert spec.input_size is not None and len(spec.mean) == len(spec.std) == 3
    out = model(torch.randn(2, *spec.input_size))
    assert out.shape == (2, 10)
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert getattr(model, "nndist_name") == name


def test_registry_lookup() -> None:
    assert list_models("cifar_resnet*") == [f"cifar_resnet{d}" for d in (110, 20, 32, 44, 56)]
    assert "paper_cnn" in list_models()
    with pytest.raises(UnknownNameError, match="valid names: .*paper_cnn"):
        create_model("resnet9000")


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_resnet_keys_match_checkpoint_layout(depth: int) -> None:
    n = (depth - 2) // 6
    expected = {"conv1.weight", "linear.weight", "linear.bias"}
    bn = ("weight", "bias", "running_mean", "running_var")
    expected |= {f"bn1.{k}" for k in bn}
    for s in (1, 2, 3):
        for i in range(n):
            expected |= {f"layer{s}.{i}.conv1.weight", f"layer{s}.{i}.conv2.weight"}
            expected |= {f"layer{s}.{i}.bn{j}.{k}" for j in (1, 2) for k in bn}
    keys = {k for k in create_model(f"cifar_resnet{depth}").state_dict() if not k.endswith("num_batches_tracked")}
    assert keys == expected


def test_resnet_option_a_shortcut() -> None:
    block = create_model("cifar_resnet20").layer2[0]
    x = torch.randn(1, 16, 8, 8)
    sc = block.shortcut(x)
    assert sc.shape == (1, 32, 4, 4)
    assert torch.equal(sc[:, 8:24], x[:, :, ::2, ::2])
    assert sc[:, :8].abs().sum() == 0 and sc[:, 24:].abs().sum() == 0
    assert not list(block.shortcut.parameters())


def test_torchvision_model_random_init() -> None:
    model = create_model("torchvision:resnet18", num_classes=7)
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 7)
    assert get_model_spec("torchvision:resnet18").input_size is None
    with pytest.raises(UnknownNameError, match="resnet18"):
        get_model_spec("torchvision:no_such_net")


def test_torchvision_weights_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models._api as api

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-hub")
    with pytest.raises(NndistError, match="--weights PATH"):
        create_model("torchvision:resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(UnknownNameError, match="IMAGENET1K_V1"):
        create_model("torchvision:resnet18", weights="NOPE")


# ------------------------------------------------------------------------------- checkpoints


def _rename_with_sha(path: Path) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    target = path.with_name(f"{path.stem}-{digest}{path.suffix}")
    path.rename(target)
    return target


def test_save_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("paper_cnn")
    path = save_checkpoint(tmp_path / "ck" / "after.safetensors", model, {"model": "paper_cnn", "lr": 1e-4})
    assert path.is_file() and not list(path.parent.glob(".*tmp-*"))
    other = load_weights(create_model("paper_cnn"), path)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    loaded, info = load_model_spec(str(path))
    assert info["name"] == "paper_cnn" and info["config"]["lr"] == 1e-4
    assert torch.equal(loaded.fc2.weight, model.fc2.weight)


def test_save_checkpoint_resnet_with_bn_buffers(tmp_path: Path) -> None:
    model = create_model("cifar_resnet20")
    model(torch.randn(4, 3, 32, 32))  # updates running stats
    path = save_checkpoint(tmp_path / "r.safetensors", model, {})
    loaded, info = load_model_spec(path)
    assert info["name"] == "cifar_resnet20"
    assert torch.equal(loaded.bn1.running_mean, model.bn1.running_mean)


def test_th_checkpoint_like_the_public_ones(tmp_path: Path) -> None:
    src = create_model("cifar_resnet32")
    sd = {f"module.{k}": v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet32.th"
    torch.save({"best_prec1": 92.6, "state_dict": sd}, path)
    path = _rename_with_sha(path)
    model = load_weights(create_model("cifar_resnet32"), path)
    assert torch.equal(model.linear.weight, src.linear.weight)
    inferred, info = load_model_spec(path)
    assert info["name"] == "cifar_resnet32"
    assert torch.equal(inferred.layer3[4].conv2.weight, src.layer3[4].conv2.weight)


def test_missing_and_unexpected_keys_listed(tmp_path: Path) -> None:
    sd = create_model("paper_cnn").state_dict()
    sd.pop("fc2.bias")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(NndistError, match=r"missing keys: fc2\.bias.*unexpected keys: extra\.weight"):
        load_weights(create_model("paper_cnn"), path)


def test_shape_mismatch_listed(tmp_path: Path) -> None:
    path = tmp_path / "ten.pt"
    torch.save(create_model("paper_cnn").state_dict(), path)
    with pytest.raises(NndistError, match=r"shape mismatch: fc2\.weight"):
        load_weights(create_model("paper_cnn", num_classes=5), path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NndistError, match="nope.th does not exist"):
        load_weights(create_model("paper_cnn"), tmp_path / "nope.th")
    with pytest.raises(NndistError, match="does not exist"):
        load_model_spec(str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors(tmp_path: Path, damage: str) -> None:
    path = save_checkpoint(tmp_path / "x.safetensors", create_model("paper_cnn"), {"model": "paper_cnn"})
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 100, "empty": b""}[damage])
    with pytest.raises(NndistError, match="x.safetensors.*(truncated|corrupt)"):
        load_weights(create_model("paper_cnn"), path)


def test_truncated_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save(create_model("paper_cnn").state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(NndistError, match="t.pt"):
        load_weights(create_model("paper_cnn"), path)


class _Evil:
    """Unpickling this would create a file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.target, "w"))


class _EvilSystem:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("payload", [_Evil, _EvilSystem])
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_refused(tmp_path: Path, payload: type, writer: str) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    obj = {"state_dict": {"conv1.weight": torch.zeros(1)}, "x": payload(str(target))}
    if writer == "torch":
        torch.save(obj, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh)
    with pytest.raises(NndistError, match="refused"):
        load_weights(create_model("paper_cnn"), path)
    with pytest.raises(NndistError):
        load_model_spec(str(path))
    assert not target.exists()


def test_sha_prefix_checked(tmp_path: Path) -> None:
    good = tmp_path / "w.pt"
    torch.save(create_model("paper_cnn").state_dict(), good)
    good = _rename_with_sha(good)
    load_weights(create_model("paper_cnn"), good)  # matching prefix loads
    bad = tmp_path / "w-00000000.pt"
    bad.write_bytes(good.read_bytes())
    with pytest.raises(NndistError, match="SHA-256"):
        load_weights(create_model("paper_cnn"), bad)


def test_unknown_checkpoint_model(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"foo.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(NndistError, match="--model NAME"):
        load_model_spec(str(path))


# ------------------------------------------------------------------------------- evaluate


def test_evaluate_tensors_and_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(50, 3, 2, 2), torch.randint(0, 3, (50,))
    model.train()
    r = evaluate(model, (x, y), batch_size=7, progress=False)
    assert model.training
    with torch.no_grad():
        logits = model(x)
    assert r["n"] == 50
    assert r["top1"] == pytest.approx(100.0 * float((logits.argmax(1) == y).float().mean()))
    assert r["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-5)


@pytest.mark.data
@pytest.mark.slow
def test_resnet20_top1_on_real_cifar(cifar_dir: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from nndist.data import load_split

    data = load_split(cifar_dir, "test", cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    model = create_model("cifar_resnet20", weights=models_dir / "resnet20-12fca82f.th")
    r = evaluate(model, data, progress=False)
    assert r["n"] == 10000
    assert r["top1"] == pytest.approx(81.03, abs=0.1)
