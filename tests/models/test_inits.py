"""Initialisation schemes: each matches its formula (paper eq. 1-8, torch.nn.init conventions)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nndist.errors import NndistError, UnknownNameError
from nndist.inits import INITS, PAPER_INITS, fans, init_model, list_inits

# Large layers so the sample std is within ~0.1% of the true one; the tolerance is 2%.
LAYERS = {
    "linear": lambda: nn.Linear(2000, 1000),
    "conv2d": lambda: nn.Conv2d(256, 128, 3),
    "conv1d": lambda: nn.Conv1d(512, 256, 5),
}


def expected_std(scheme: str, d_in: int, d_out: int, gain: float | None = None) -> float:
    g = {"kaiming_normal": math.sqrt(2), "kaiming_uniform": math.sqrt(2)}.get(scheme, 1.0) if gain is None else gain
    return {
        "xavier_normal": g * math.sqrt(2 / (d_in + d_out)),
        "xavier_uniform": g * math.sqrt(6 / (d_in + d_out)) / math.sqrt(3),
        "kaiming_normal": g / math.sqrt(d_in),
        "kaiming_uniform": g * math.sqrt(3 / d_in) / math.sqrt(3),
        "orthogonal": g / math.sqrt(max(d_in, d_out)),
        "default": g / math.sqrt(d_in) / math.sqrt(3),
        "ones": 0.0,
        "zeros": 0.0,
    }[scheme]


def test_registry_has_the_paper_schemes() -> None:
    assert set(PAPER_INITS) <= set(INITS.names())
    assert "default" in list_inits()
    assert list_inits("kaiming*") == ["kaiming_normal", "kaiming_uniform"]


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("scheme", INITS.names())
def test_std_matches_formula(scheme: str, layer: str) -> None:
    module = LAYERS[layer]()
    init_model(module, scheme, seed=0)
    w = module.weight.detach()
    d_in, d_out = fans(w)
    std = float(w.std(unbiased=False))
    target = expected_std(scheme, d_in, d_out)
    if target == 0.0:
        assert std == 0.0
    else:
        assert std == pytest.approx(target, rel=0.02)
        assert abs(float(w.mean())) < 0.05 * target


@pytest.mark.parametrize("scheme", ["xavier_normal", "kaiming_uniform", "orthogonal"])
def test_gain_override(scheme: str) -> None:
    module = nn.Linear(2000, 1000)
    init_model(module, scheme, gain=3.0, seed=0)
    assert float(module.weight.detach().std()) == pytest.approx(expected_std(scheme, 2000, 1000, gain=3.0), rel=0.02)


@pytest.mark.parametrize("scheme,bound", [
    ("xavier_uniform", lambda i, o: math.sqrt(6 / (i + o))),
    ("kaiming_uniform", lambda i, o: math.sqrt(2) * math.sqrt(3 / i)),
    ("default", lambda i, o: 1 / math.sqrt(i)),
])
def test_uniform_bounds(scheme: str, bound) -> None:  # type: ignore[no-untyped-def]
    module = nn.Conv2d(64, 64, 3)
    init_model(module, scheme, seed=1)
    w = module.weight.detach()
    a = bound(*fans(w))
    assert float(w.abs().max()) <= a
    assert float(w.abs().max()) > 0.99 * a  # the whole interval is used


@pytest.mark.parametrize("shape", [(100, 300), (300, 100), (32, 16, 3, 3)])
def test_orthogonal(shape: tuple[int, ...]) -> None:
    module = nn.Linear(shape[1], shape[0]) if len(shape) == 2 else nn.Conv2d(shape[1], shape[0], shape[2])
    init_model(module, "orthogonal", seed=0)
    w = module.weight.detach().reshape(shape[0], -1).double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    assert torch.allclose(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("scheme,value", [("ones", 1.0), ("zeros", 0.0)])
def test_ones_zeros_exact_including_bias(scheme: str, value: float) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    init_model(model, scheme)
    for p in model.parameters():
        assert torch.all(p == value)


def test_biases_keep_default_distribution() -> None:
    module = nn.Linear(400, 20000)
    init_model(module, "kaiming_normal", seed=0)
    b = module.bias.detach()
    assert float(b.abs().max()) <= 1 / 20
    assert float(b.std()) == pytest.approx(1 / 20 / math.sqrt(3), rel=0.03)


@pytest.mark.parametrize("bias_init,value", [("zeros", 0.0), ("ones", 1.0), (0.25, 0.25), ("-2", -2.0)])
def test_bias_init_override(bias_init: object, value: float) -> None:
    module = nn.Linear(5, 3)
    init_model(module, "orthogonal", bias_init=bias_init, seed=0)  # type: ignore[arg-type]
    assert torch.all(module.bias == value)
    init_model(module, "zeros", bias_init="default", seed=0)
    assert torch.all(module.weight == 0) and module.bias.abs().max() > 0


def test_bias_init_invalid() -> None:
    with pytest.raises(NndistError, match="bias_init"):
        init_model(nn.Linear(2, 2), "orthogonal", bias_init="big")


def test_batchnorm_untouched_and_conv_without_bias() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8))
    init_model(model, "ones")
    assert torch.all(model[0].weight == 1)
    assert torch.all(model[1].weight == 1) and torch.all(model[1].bias == 0)


@pytest.mark.parametrize("scheme", INITS.names())
def test_deterministic_with_seed(scheme: str) -> None:
    def draw(**kw: object) -> list[torch.Tensor]:
        m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 4))
        init_model(m, scheme, **kw)  # type: ignore[arg-type]
        return [p.detach().clone() for p in m.parameters()]

    a, b = draw(seed=3), draw(generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(a, draw(generator=3)))
    if scheme not in ("ones", "zeros"):
        assert not torch.equal(a[0], draw(seed=4)[0])


def test_unknown_scheme_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        init_model(nn.Linear(2, 2), "he_normal")
    for name in INITS.names():
        assert name in str(info.value)


def test_paper_cnn_all_layers_initialised() -> None:
    from nndist.models import create_model

    model = init_model(create_model("paper_cnn"), "xavier_normal", seed=0)
    for name in ("conv1", "conv2", "conv3", "fc1", "fc2"):
        w = getattr(model, name).weight.detach()
        d_in, d_out = fans(w)
        assert float(w.std()) == pytest.approx(math.sqrt(2 / (d_in + d_out)), rel=0.15 if w.numel() < 5000 else 0.02)
