"""The one hook context and the feature stream: hooks never outlive their block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nndist.errors import NndistError
from nndist.probes import forward_hooks, layer_modules, stream_features


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_removed_after_normal_exit_and_after_an_exception():
    model = _model()
    seen = []
    with forward_hooks([model[0], model[2]], lambda m, a, out: seen.append(out.shape)):
        assert _hooks(model) == 2
        model(torch.randn(2, 4))
    assert seen == [torch.Size([2, 5]), torch.Size([2, 3])] and _hooks(model) == 0
    with pytest.raises(RuntimeError):
        with forward_hooks([model[0]], lambda m, a, out: None):
            model(torch.randn(2, 7))  # wrong width: the forward raises
    assert _hooks(model) == 0


def test_layer_modules_names_unknown_layers():
    model = _model()
    assert list(layer_modules(model, ["0", "2"])) == ["0", "2"]
    with pytest.raises(NndistError, match="unknown layer name.*9.*layers with parameters in this model: 0, 2"):
        layer_modules(model, ["9"])


def test_stream_features_hands_on_every_batch_of_every_input():
    model = _model()
    got: dict[tuple[str, str], list[torch.Tensor]] = {}
    inputs = {"a": torch.randn(5, 4), "b": torch.randn(3, 4)}
    stream_features(model, ["0", "2"], inputs, lambda layer, inp, out: got.setdefault((layer, inp), []).append(out),
                    batch_size=2)
    for name, x in inputs.items():
        torch.testing.assert_close(torch.cat(got[("2", name)]), model(x), rtol=1e-6, atol=1e-7)  # batch size changes the GEMM rounding
        assert [t.shape[0] for t in got[("0", name)]] == [2] * (x.shape[0] // 2) + ([1] if x.shape[0] % 2 else [])
    assert _hooks(model) == 0 and not model.training
