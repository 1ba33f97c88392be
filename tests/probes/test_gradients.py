"""Emission/absorption against the literal definition, in float64, plus the plumbing's promises."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gradients_literal import grad_at_output, literal_stats, rel_err
from torch import Tensor, nn

import nndist.probes.gradients as ndg
from nndist.errors import NndistError
from nndist.probes.gradients import (
    HANDLERS,
    GradientResults,
    LayerGradients,
    TrainModeNotice,
    conv2d_local_gradient_norms,
    emission_absorption,
    register_handler,
)

TOL = 1e-10


# --------------------------------------------------------------------------------------------
# The literal twin: every LG^{c1->c2} map written out, one transposed convolution per pair
# --------------------------------------------------------------------------------------------


def _lead_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))  # type: ignore[return-value]
    if conv.padding == "valid":
        return (0, 0)
    return tuple(conv.padding)  # type: ignore[return-value]


def literal_local_gradients(conv: nn.Conv2d, input_hw: tuple[int, int], G: Tensor) -> Tensor:
    """``LG[b, c1, c2]``, ``(B, C_out, C_in, H1, W1)``: one ``conv_transpose2d`` per channel pair."""
    W = conv.weight.detach()
    B, C_out = G.shape[:2]
    cin_g, groups = W.shape[1], conv.groups
    H1, W1 = input_hw
    ph, pw = _lead_padding(conv)
    sh, sw = conv.stride
    dh, dw = conv.dilation
    k1, k2 = conv.kernel_size
    out = torch.zeros(B, C_out, cin_g * groups, H1, W1, dtype=G.dtype)
    symmetric = conv.padding != "same" or (dh * (k1 - 1) % 2 == 0 and dw * (k2 - 1) % 2 == 0)
    for c1 in range(C_out):
        group = c1 // (C_out // groups)
        for j in range(cin_g):
            g1, w1 = G[:, c1 : c1 + 1], W[c1 : c1 + 1, j : j + 1]
            if symmetric:
                # output_padding restores the rows that the forward's floor division dropped
                oph = H1 - ((G.shape[2] - 1) * sh - 2 * ph + dh * (k1 - 1) + 1)
                opw = W1 - ((G.shape[3] - 1) * sw - 2 * pw + dw * (k2 - 1) + 1)
                lg = F.conv_transpose2d(
                    g1, w1, stride=conv.stride, padding=(ph, pw), output_padding=(oph, opw), dilation=conv.dilation
                )
            else:  # asymmetric 'same': scatter onto the full grid, then crop
                full = F.conv_transpose2d(g1, w1, stride=conv.stride, dilation=conv.dilation)
                lg = full[..., ph : ph + H1, pw : pw + W1]
            assert lg.shape[-2:] == (H1, W1)
            out[:, c1, group * cin_g + j] = lg[:, 0]
    return out


CONV_CASES = [
    dict(c_in=3, c_out=5, k=3, stride=1, padding=1),
    dict(c_in=4, c_out=6, k=3, stride=2, padding=1, bias=False),
    dict(c_in=4, c_out=4, k=3, stride=1, padding=0),
    dict(c_in=3, c_out=4, k=5, stride=1, padding="same", dilation=2),
    dict(c_in=4, c_out=6, k=3, stride=1, padding=2, dilation=2, groups=2),
    dict(c_in=6, c_out=6, k=3, stride=2, padding=1, groups=6),  # depthwise
    dict(c_in=4, c_out=8, k=1, stride=1, padding=0),
    dict(c_in=3, c_out=4, k=7, stride=2, padding=3),
    dict(c_in=2, c_out=3, k=(3, 5), stride=(2, 1), padding=(1, 2), bias=False),
    dict(c_in=3, c_out=3, k=(2, 4), stride=1, padding="same"),  # asymmetric 'same'
    dict(c_in=3, c_out=4, k=4, stride=3, padding=2, dilation=2),
    dict(c_in=4, c_out=4, k=(1, 3), stride=(1, 2), padding="valid", groups=2),
]


def make_conv(case: dict, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(
        case["c_in"],
        case["c_out"],
        case["k"],
        stride=case.get("stride", 1),
        padding=case.get("padding", 0),
        dilation=case.get("dilation", 1),
        groups=case.get("groups", 1),
        bias=case.get("bias", True),
    ).double()


def quiet_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    with warnings.catch_warnings():  # even-kernel 'same' warns about a padded copy
        warnings.simplefilter("ignore", UserWarning)
        return conv(x)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_conv2d_against_literal(case: dict) -> None:
    conv = make_conv(case)
    x = torch.randn(3, case["c_in"], 11, 9, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        G, da = grad_at_output(conv, x)
    lg = literal_local_gradients(conv, (11, 9), G)
    # the literal twin is right: summed over c1 it is autograd's input gradient
    assert rel_err(lg.sum(1), da) <= 1e-12
    em, ab, ns = literal_stats(lg)
    res = ndg.conv2d_handler(conv, x, G)
    assert res.emission.shape == (3, case["c_out"]) and res.absorption.shape == (3, case["c_in"])
    assert res.norm_sum.shape == (case["c_out"], case["c_in"])
    assert rel_err(res.emission, em) <= TOL
    assert rel_err(res.absorption, ab) <= TOL
    assert rel_err(res.norm_sum, ns) <= TOL


@pytest.mark.parametrize("case", CONV_CASES[:6], ids=str)
def test_emission_absorption_end_to_end_conv(case: dict) -> None:
    conv = make_conv(case)
    x = torch.randn(4, case["c_in"], 10, 12, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out_shape = conv(x).shape
    head = nn.Linear(out_shape[1] * out_shape[2] * out_shape[3], 5).double()
    model = nn.Sequential(conv, nn.Flatten(), head)
    y = torch.tensor([0, 1, 2, 3])
    res = emission_absorption(model, x, y)
    a = x.clone().requires_grad_()
    v = conv(a)
    loss = F.cross_entropy(model[2](model[1](v)), y, reduction="sum")
    G, da = torch.autograd.grad(loss, [v, a])
    lg = literal_local_gradients(conv, (10, 12), G)
    assert rel_err(lg.sum(1), da) <= 1e-12
    em, ab, ns = literal_stats(lg)
    assert rel_err(res["0"].emission, em) <= TOL
    assert rel_err(res["0"].absorption, ab) <= TOL
    assert rel_err(res["0"].norm_sum, ns) <= TOL
    # the paper's "as much gradient out as in": sum_c1 Em == sum_c2 Ab, per sample
    for r in res.values():
        assert rel_err(r.emission.sum(1), r.absorption.sum(1)) <= TOL


@settings(max_examples=15, deadline=None)
@given(
    c_in=st.integers(1, 4),
    mult=st.integers(1, 3),
    groups=st.sampled_from([1, 2]),
    k1=st.integers(1, 5),
    k2=st.integers(1, 5),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    pad=st.integers(0, 3),
    h=st.integers(5, 12),
    w=st.integers(5, 12),
)
def test_conv2d_identity_property(
    c_in: int, mult: int, groups: int, k1: int, k2: int, stride: int, dilation: int, pad: int, h: int, w: int
) -> None:
    c_in *= groups
    c_out = mult * groups
    if dilation * (max(k1, k2) - 1) + 1 > min(h, w) + 2 * pad:
        return
    conv = nn.Conv2d(c_in, c_out, (k1, k2), stride=stride, padding=pad, dilation=dilation, groups=groups).double()
    x = torch.randn(2, c_in, h, w, dtype=torch.float64)
    G, da = grad_at_output(conv, x)
    norms = conv2d_local_gradient_norms(
        conv.weight.detach(), G, (h, w), stride=(stride, stride), padding=(pad, pad),
        dilation=(dilation, dilation), groups=groups,
    )
    res = ndg.conv2d.grouped_result(norms, groups)
    assert rel_err(res.emission.sum(1), res.absorption.sum(1)) <= TOL
    em, ab, _ = literal_stats(literal_local_gradients(conv, (h, w), G))
    assert rel_err(res.emission, em) <= TOL and rel_err(res.absorption, ab) <= TOL


# --------------------------------------------------------------------------------------------
# Linear (Proposition 1)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lead", [(), (5,), (3, 2)])
def test_linear_against_literal(lead: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    lin = nn.Linear(6, 4).double()
    B = 3
    a = torch.randn(B, *lead, 6, dtype=torch.float64, requires_grad=True)
    v = lin(a)
    G = torch.randn(v.shape, dtype=torch.float64)
    (da,) = torch.autograd.grad(v, a, G)
    W = lin.weight.detach()
    lg = torch.zeros(B, 4, 6, *lead, dtype=torch.float64)  # LG^{i->j} = g_i W_ij over the leading dims
    for i in range(4):
        for j in range(6):
            lg[:, i, j] = G[..., i] * W[i, j]
    assert rel_err(lg.sum(1).movedim(1, -1), da) <= 1e-12
    norms = lg.reshape(B, 4, 6, -1).norm(dim=-1)
    res = ndg.linear_handler(lin, a, G)
    assert rel_err(res.emission, norms.sum(2)) <= TOL
    assert rel_err(res.absorption, norms.sum(1)) <= TOL
    assert rel_err(res.norm_sum, norms.sum(0)) <= TOL
    assert rel_err(res.emission.sum(1), res.absorption.sum(1)) <= TOL


def test_linear_with_tokens_end_to_end() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    res = emission_absorption(model, x, loss=lambda out, _: out.pow(2).sum((1, 2)))
    assert set(res) == {"0", "2"} and res["0"].emission.shape == (4, 7) and res["0"].absorption.shape == (4, 5)


# --------------------------------------------------------------------------------------------
# Loss modes, per-sample independence
# --------------------------------------------------------------------------------------------


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(self.drop(x.mean((2, 3))))


def small_net() -> nn.Module:
    torch.manual_seed(3)
    net = SmallNet().double()
    for bn in (net.bn1, net.bn2):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return net.eval()  # tests of train-mode handling call .train() themselves


def reference_grads(model: nn.Module, x: Tensor, losses_fn) -> dict[str, Tensor]:  # type: ignore[no-untyped-def]
    """dL/dV per layer by autograd, with the loss summed over the batch, in eval mode."""
    model.eval()
    outs: dict[str, Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, o)) for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    try:
        losses = losses_fn(model(x))
    finally:
        for h in hooks:
            h.remove()
    grads = torch.autograd.grad(losses.sum(), list(outs.values()))
    return dict(zip(outs, grads))


@pytest.mark.parametrize("mode", ["cross_entropy", "logit", "logit_none", "callable"])
def test_loss_modes(mode: str) -> None:
    model = small_net()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 0, 4, 2])
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    if mode == "cross_entropy":
        res = emission_absorption(model, x, y)
        fn = lambda out: F.cross_entropy(out, y, reduction="none")  # noqa: E731
    elif mode == "logit":
        res = emission_absorption(model, x, y, loss="logit")
        fn = lambda out: out.gather(1, y[:, None])[:, 0]  # noqa: E731
    elif mode == "logit_none":
        res = emission_absorption(model, x, loss="logit")
        fn = lambda out: out.gather(1, pred[:, None])[:, 0]  # noqa: E731
    else:
        res = emission_absorption(model, x, y, loss=lambda out, t: out.pow(2).sum(1) * (t + 1))
        fn = lambda out: out.pow(2).sum(1) * (y + 1)  # noqa: E731
    grads = reference_grads(model, x, fn)
    G = grads["conv2"]
    em, ab, ns = literal_stats(literal_local_gradients(model.conv2, (8, 8), G))
    assert rel_err(res["conv2"].emission, em) <= TOL
    assert rel_err(res["conv2"].absorption, ab) <= TOL
    assert rel_err(res["conv2"].norm_sum, ns) <= TOL
    assert list(res) == ["conv1", "conv2", "fc"]


def test_per_sample_independence_and_modes_restored() -> None:
    model = small_net()
    model.train()
    model.bn2.eval()  # mixed modes must come back exactly
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4])
    with pytest.warns(TrainModeNotice, match="eval mode"):
        full = emission_absorption(model, x, y)
    assert model.training and model.bn1.training and not model.bn2.training and model.drop.training
    model.eval()
    for b in (0, 3):
        alone = emission_absorption(model, x[b : b + 1], y[b : b + 1])
        for name in full:
            assert rel_err(full[name].emission[b], alone[name].emission[0]) <= TOL
            assert rel_err(full[name].absorption[b], alone[name].absorption[0]) <= TOL
    total = sum(emission_absorption(model, x[b : b + 1], y[b : b + 1])["conv1"].norm_sum for b in range(5))
    assert rel_err(full["conv1"].norm_sum, total) <= TOL


def test_result_types_and_public_api() -> None:
    model = small_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    res = emission_absorption(model, x, torch.tensor([0, 1]), layers=["conv2"])
    assert isinstance(res, GradientResults) and isinstance(res, dict) and list(res) == ["conv2"]
    r = res["conv2"]
    assert isinstance(r, LayerGradients)
    for t in (r.emission, r.absorption, r.norm_sum):
        assert not t.requires_grad and t.dtype == torch.float64 and t.device == x.device
    assert res.unsupported == {} and res.not_called == {} and res.definition == "paper"
    assert list(res.no_local_gradient) == ["bn1", "bn2"]
    assert set(ndg.__all__) >= {"emission_absorption", "register_handler", "GradientResults", "LayerGradients", "HANDLERS"}


def test_errors() -> None:
    model = small_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(NndistError, match="needs targets"):
        emission_absorption(model, x)
    with pytest.raises(NndistError, match="valid names: conv1, conv2, fc"):
        emission_absorption(model, x, loss="logit", layers=["conv3"])
    with pytest.raises(NndistError, match="no emission/absorption handler"):
        emission_absorption(model, x, loss="logit", layers=["bn1"])
    with pytest.raises(NndistError, match="unknown loss"):
        emission_absorption(model, x, loss="mse")
    with pytest.raises(NndistError, match=r"shape \(2,\)"):
        emission_absorption(model, x, loss=lambda out, t: out.sum())
    reflect = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(NndistError, match="padding_mode='reflect'"):
        emission_absorption(reflect, torch.randn(1, 3, 5, 5), loss="logit")


def test_nonfinite_loss_gives_nan_not_error() -> None:
    model = small_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    res = emission_absorption(model, x, loss=lambda out, t: out.sum(1) * float("nan"))
    assert torch.isnan(res["conv1"].emission).all()


# --------------------------------------------------------------------------------------------
# Hooks, unsupported layers, handlers
# --------------------------------------------------------------------------------------------


def assert_no_hooks(model: nn.Module) -> None:
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(m, attr), (m, attr)


def test_no_hooks_left_after_run_and_after_exception() -> None:
    model = small_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    emission_absorption(model, x, torch.tensor([0, 1]))
    assert_no_hooks(model)

    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x: Tensor) -> Tensor:
            self.conv(x)
            raise RuntimeError("boom")

    boom = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        emission_absorption(boom, torch.randn(1, 3, 5, 5), loss="logit")
    assert_no_hooks(boom)
    assert boom.training


def test_inplace_after_conv_and_frozen_layers() -> None:
    class Inplace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(F.relu_(self.conv(x)).mean((2, 3)))

    torch.manual_seed(4)
    model = Inplace().double()
    for p in model.parameters():
        p.requires_grad_(False)  # frozen: a graph must exist anyway, and flags stay untouched
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    res = emission_absorption(model, x, loss="logit")
    assert all(not p.requires_grad for p in model.parameters())
    a = x.clone()
    v = model.conv(a).requires_grad_()
    out = model.fc(F.relu(v).mean((2, 3)))
    (G,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), v)
    em, ab, _ = literal_stats(literal_local_gradients(model.conv, (6, 6), G))
    assert rel_err(res["conv"].emission, em) <= TOL and rel_err(res["conv"].absorption, ab) <= TOL


class Scale(nn.Module):
    """A custom layer with parameters: y[b, i] = sum_j M[i, j] x[b, j] written by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.randn(4, 3))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.m.T


def test_unsupported_listed_and_register_handler() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), Scale(), nn.LayerNorm(4), nn.Linear(4, 2)).double()
    model[2].m.data = model[2].m.data.double()
    x = torch.randn(2, 2, 3, dtype=torch.float64)
    res = emission_absorption(model, x, loss="logit")
    assert res.unsupported == {"2": "Scale"}
    assert list(res) == ["0", "4"]
    assert list(res.no_local_gradient) == ["3"] and "per-channel affine" in res.no_local_gradient["3"]

    def scale_handler(module: nn.Module, input: Tensor, grad_output: Tensor) -> LayerGradients:
        return ndg.linear_local_gradient_norms(module.m.detach(), grad_output)

    register_handler(Scale, scale_handler)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_handler(Scale, scale_handler)
        res = emission_absorption(model, x, loss="logit")
        assert res.unsupported == {} and list(res) == ["0", "2", "4"]
        assert res["2"].emission.shape == (2, 4) and res["2"].absorption.shape == (2, 3)
    finally:
        HANDLERS.remove(Scale)
    assert Scale not in HANDLERS


def test_module_called_twice_sums_calls() -> None:
    torch.manual_seed(6)
    lin = nn.Linear(3, 3).double()
    model = nn.Sequential(lin, nn.Tanh(), lin)
    x = torch.randn(2, 3, dtype=torch.float64)
    res = emission_absorption(model, x, loss="logit")
    assert list(res) == ["0"] and rel_err(res["0"].emission.sum(1), res["0"].absorption.sum(1)) <= TOL


# --------------------------------------------------------------------------------------------
# Real data: pretrained ResNet-20 on CIFAR-10, float32 fast path against the float64 literal
# --------------------------------------------------------------------------------------------


@pytest.mark.data
def test_resnet20_cifar_float32_against_float64_literal(models_dir: Path, cifar_dir: Path) -> None:
    import numpy as np
    from PIL import Image

    from nndist.models import create_model, load_weights

    model = load_weights(create_model("cifar_resnet20"), models_dir / "resnet20-12fca82f.th").eval()
    classes = sorted(p.name for p in (cifar_dir / "test").iterdir() if p.is_dir())
    files = [sorted((cifar_dir / "test" / c).glob("*.jpg"))[0] for c in classes[:3]]  # 3 real images
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0 for f in files])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = ((x - mean) / std).contiguous()
    y = torch.arange(3)
    layers = ["conv1", "layer1.0.conv1", "layer2.0.conv1", "linear"]  # stem, stride 1, stride 2, head
    res = emission_absorption(model, x, y, layers=layers)
    model64 = load_weights(create_model("cifar_resnet20"), models_dir / "resnet20-12fca82f.th").double().eval()
    grads = reference_grads(model64, x.double(), lambda out: F.cross_entropy(out, y, reduction="none"))
    for name in layers[:-1]:
        conv = model64.get_submodule(name)
        em, ab, ns = literal_stats(literal_local_gradients(conv, (32, 32), grads[name]))
        assert rel_err(res[name].emission.double(), em) <= 1e-4, name
        assert rel_err(res[name].absorption.double(), ab) <= 1e-4, name
        assert rel_err(res[name].norm_sum.double(), ns) <= 1e-4, name
    g, w = grads["linear"], model64.linear.weight.detach()
    norms = (g[:, :, None] * w).abs()  # ||g_i W_ij|| for a (B, C) gradient
    assert rel_err(res["linear"].emission.double(), norms.sum(2)) <= 1e-4
    assert rel_err(res["linear"].absorption.double(), norms.sum(1)) <= 1e-4


def test_layers_off_the_input_path_use_the_slow_path() -> None:
    class Side(nn.Module):
        """One conv sees the input, another a learned constant; an embedding model has int inputs."""

        def __init__(self) -> None:
            super().__init__()
            self.const = nn.Parameter(torch.randn(1, 2, 5, 5))
            self.conv_x = nn.Conv2d(2, 3, 3, padding=1)
            self.conv_c = nn.Conv2d(2, 3, 3, padding=1)

        def forward(self, x: Tensor) -> Tensor:
            return (self.conv_x(x) * self.conv_c(self.const)).mean((2, 3))

    torch.manual_seed(7)
    model = Side().double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    res = emission_absorption(model, x, torch.tensor([0, 2]))
    assert res.unsupported == {} and list(res.no_local_gradient) == ["const"]  # held by the root container
    assert "held directly by Side" in res.no_local_gradient["const"]
    c = model.const.detach().expand(2, -1, -1, -1)  # batch of 1 behind a broadcast: per-sample G sums
    v = model.conv_c(c.contiguous()).detach().requires_grad_()
    loss = F.cross_entropy((model.conv_x(x) * v).mean((2, 3)), torch.tensor([0, 2]), reduction="sum")
    (G,) = torch.autograd.grad(loss, v)
    assert res["conv_c"].emission.shape == (1, 3)
    em, ab, _ = literal_stats(literal_local_gradients(model.conv_c, (5, 5), G.sum(0, keepdim=True)))
    assert rel_err(res["conv_c"].emission, em) <= TOL and rel_err(res["conv_c"].absorption, ab) <= TOL

    emb = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3)).double()
    tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
    res = emission_absorption(emb, tokens, loss=lambda out, _: out.sum((1, 2)))
    assert res.unsupported == {} and "index lookup" in res.no_local_gradient["0"] and res["1"].emission.shape == (2, 3)
    g = torch.ones(2, 3, 3, dtype=torch.float64)
    assert rel_err(res["1"].emission, g.norm(dim=1) * emb[1].weight.detach().abs().sum(1)) <= TOL
