"""Layer coverage: 1-/3-D and transposed convolutions, Linear-likes, attention, parametrised weights,
and what is reported as having no local gradient; every kernel against the literal twin in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gradients_literal import (
    SAME_PADDING_COPY,
    channel_grad_norms,
    grad_at_output,
    literal_local_gradients,
    literal_stats,
    rel_err,
)
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
from torch.nn.utils import parametrizations

import nndist.probes.gradients as ndg
from nndist.errors import NndistError
from nndist.probes.gradients import HANDLERS, LayerGradients, emission_absorption

TOL = 1e-10
pytestmark = pytest.mark.filterwarnings(SAME_PADDING_COPY)


def assert_matches_literal(res: LayerGradients, module: nn.Module, x: Tensor, G: Tensor, definition: str) -> None:
    lg = literal_local_gradients(module, x, G)
    em, ab, ns = literal_stats(lg, definition, channel_grad_norms(module, G))
    assert res.emission.shape == em.shape and res.absorption.shape == ab.shape and res.norm_sum.shape == ns.shape
    assert rel_err(res.emission, em) <= TOL
    assert rel_err(res.absorption, ab) <= TOL
    assert rel_err(res.norm_sum, ns) <= TOL


# --------------------------------------------------------------------------------------------
# Conv1d, Conv3d (the N-d kernel shared with Conv2d) and transposed convolutions
# --------------------------------------------------------------------------------------------

CONV_ND_CASES = [
    (nn.Conv1d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=1, padding=1), (3, 3, 11)),
    (nn.Conv1d, dict(in_channels=4, out_channels=6, kernel_size=5, stride=2, padding=2, dilation=2, groups=2), (2, 4, 13)),
    (nn.Conv1d, dict(in_channels=2, out_channels=3, kernel_size=4, padding="same", dilation=1, bias=False), (2, 2, 9)),
    (nn.Conv1d, dict(in_channels=3, out_channels=3, kernel_size=3, stride=3, padding=0, groups=3), (2, 3, 10)),
    (nn.Conv3d, dict(in_channels=2, out_channels=3, kernel_size=3, stride=1, padding=1), (2, 2, 5, 4, 6)),
    (nn.Conv3d, dict(in_channels=4, out_channels=4, kernel_size=(3, 2, 3), stride=(2, 1, 2), padding=(1, 0, 2), groups=2), (2, 4, 6, 5, 5)),
    (nn.Conv3d, dict(in_channels=2, out_channels=2, kernel_size=(2, 3, 1), padding="same", dilation=(2, 1, 1)), (2, 2, 5, 5, 3)),
    (nn.Conv3d, dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, dilation=2, padding=2, bias=False), (1, 2, 7, 6, 6)),
]

TRANSPOSED_CASES = [
    (nn.ConvTranspose1d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1, output_padding=1), (2, 3, 6)),
    (nn.ConvTranspose1d, dict(in_channels=4, out_channels=2, kernel_size=4, stride=1, padding=2, dilation=2, groups=2), (2, 4, 7)),
    (nn.ConvTranspose2d, dict(in_channels=3, out_channels=4, kernel_size=4, stride=2, padding=1), (2, 3, 4, 5)),
    (nn.ConvTranspose2d, dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, bias=False), (2, 4, 3, 4)),
    (nn.ConvTranspose2d, dict(in_channels=2, out_channels=3, kernel_size=3, stride=1, padding=2, dilation=3, output_padding=1), (2, 2, 6, 6)),
    (nn.ConvTranspose3d, dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1, output_padding=1), (2, 2, 3, 3, 2)),
    (nn.ConvTranspose3d, dict(in_channels=2, out_channels=2, kernel_size=(2, 3, 1), stride=(1, 2, 3), groups=2), (1, 2, 3, 3, 3)),
]


def case_id(case: tuple) -> str:
    cls, kw, shape = case
    return f"{cls.__name__}[{','.join(f'{k}={v}' for k, v in kw.items() if k not in ('in_channels', 'out_channels'))}]{shape}"


@pytest.mark.parametrize("definition", ["paper", "author_code"])
@pytest.mark.parametrize("case", CONV_ND_CASES + TRANSPOSED_CASES, ids=case_id)
def test_conv_layers_against_literal(case: tuple, definition: str) -> None:
    cls, kw, shape = case
    torch.manual_seed(0)
    module = cls(**kw).double()
    x = torch.randn(shape, dtype=torch.float64)
    G, _ = grad_at_output(module, x)
    res = HANDLERS.get(cls)(module, x, G, definition=definition)  # type: ignore[call-arg]
    assert_matches_literal(res, module, x, G, definition)
    if definition == "paper":
        assert rel_err(res.emission.sum(1), res.absorption.sum(1)) <= TOL


def test_conv_kernel_orders_agree() -> None:
    """A batch of one applies Gamma to W; a large batch folds W into the mix first: same numbers."""
    torch.manual_seed(15)
    W = torch.randn(6, 5, 3, 3, dtype=torch.float64)
    G = torch.randn(64, 6, 7, 6, dtype=torch.float64)
    kw = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    batched = ndg.conv_local_gradient_sq_norms(W, G, (7, 6), **kw)  # (C_out, 64, C_in)
    for b in (0, 37):
        alone = ndg.conv_local_gradient_sq_norms(W, G[b : b + 1], (7, 6), **kw)
        assert rel_err(alone[:, 0], batched[:, b]) <= 1e-12


def test_conv_transpose_with_output_size() -> None:
    """``forward(x, output_size=...)`` picks the output padding at call time; it is read off the shapes."""
    torch.manual_seed(1)
    module = nn.ConvTranspose2d(3, 2, 3, stride=3, padding=1).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)

    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = module
            self.head = nn.Linear(2 * 12 * 11, 3).double()

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.up(x, output_size=[12, 11]).flatten(1))

    model = Up()
    y = torch.tensor([0, 2])
    res = emission_absorption(model, x, y)
    a = x.clone().requires_grad_()
    v = module(a, output_size=[12, 11])
    (G,) = torch.autograd.grad(F.cross_entropy(model.head(v.flatten(1)), y, reduction="sum"), v)
    shaped = copy.deepcopy(module)
    shaped.output_padding = (2, 1)  # what output_size=[12, 11] means for 4x4 inputs
    assert_matches_literal(res["up"], shaped, x, G, "paper")


@settings(max_examples=12, deadline=None)
@given(
    n=st.sampled_from([1, 3]),
    k=st.integers(1, 4),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    pad=st.integers(0, 2),
    size=st.integers(4, 7),
    transposed=st.booleans(),
)
def test_nd_kernels_property(n: int, k: int, stride: int, dilation: int, pad: int, size: int, transposed: bool) -> None:
    if dilation * (k - 1) + 1 > size + 2 * pad:
        return
    torch.manual_seed(2)
    if transposed:
        cls = nn.ConvTranspose1d if n == 1 else nn.ConvTranspose3d
        op = min(stride, dilation) - 1
        module = cls(2, 3, k, stride=stride, padding=pad, dilation=dilation, output_padding=op).double()
    else:
        module = (nn.Conv1d if n == 1 else nn.Conv3d)(2, 3, k, stride=stride, padding=pad, dilation=dilation).double()
    x = torch.randn(1, 2, *([size] * n), dtype=torch.float64)
    try:
        G, _ = grad_at_output(module, x)
    except RuntimeError:  # an output size below one: not a layer
        return
    res = HANDLERS.get(type(module))(module, x, G)
    assert_matches_literal(res, module, x, G, "paper")


# --------------------------------------------------------------------------------------------
# Linear-likes: a declared list, not isinstance
# --------------------------------------------------------------------------------------------


class StandardisedLinear(nn.Linear):
    """Changes ``forward``: must stay unsupported."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight - self.weight.mean(1, keepdim=True)
        return F.linear(x, w, self.bias)


@pytest.mark.parametrize("definition", ["paper", "author_code"])
def test_linear_likes(definition: str) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        NonDynamicallyQuantizableLinear(5, 6), nn.Tanh(), nn.LazyLinear(4), nn.Tanh(), StandardisedLinear(4, 3)
    ).double()
    x = torch.randn(3, 2, 5, dtype=torch.float64)
    y = torch.tensor([[0, 1], [2, 0], [1, 1]])

    def loss(out: Tensor, t: Tensor) -> Tensor:
        return F.cross_entropy(out.transpose(1, 2), t, reduction="none").sum(1)

    if definition == "author_code":
        with pytest.raises(NndistError, match="leave loss at its default"):
            emission_absorption(model, x, y, loss=loss, definition=definition)
        return
    res = emission_absorption(model, x, y, loss=loss)
    assert list(res) == ["0", "2"] and res.unsupported == {"4": "StandardisedLinear"}
    assert type(model[2]) is nn.Linear  # the lazy layer became nn.Linear at its first call
    h0 = model[0](x)
    h2 = model[2](model[1](h0))
    for v in (h0, h2):
        v.retain_grad()
    loss(model[4](model[3](h2)), y).sum().backward()
    for name, v, inp in (("0", h0, x), ("2", h2, torch.tanh(h0).detach())):
        assert_matches_literal(res[name], model[int(name)], inp, v.grad, "paper")


# --------------------------------------------------------------------------------------------
# MultiheadAttention: equal to a model with four explicit nn.Linear layers
# --------------------------------------------------------------------------------------------


class ExplicitAttention(nn.Module):
    """Multi-head attention written out head by head, with four nn.Linear projections."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        E, H = mha.embed_dim, mha.num_heads
        bias = mha.in_proj_bias is not None
        self.q_proj = nn.Linear(E, E, bias=bias).double()
        self.k_proj = nn.Linear(mha.kdim, E, bias=bias).double()
        self.v_proj = nn.Linear(mha.vdim, E, bias=bias).double()
        self.out_proj = nn.Linear(E, E, bias=mha.out_proj.bias is not None).double()
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                wq, wk, wv = mha.in_proj_weight.split(E)
            else:
                wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            for lin, w, i in ((self.q_proj, wq, 0), (self.k_proj, wk, 1), (self.v_proj, wv, 2)):
                lin.weight.copy_(w)
                if bias:
                    lin.bias.copy_(mha.in_proj_bias[i * E : (i + 1) * E])
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)
        self.bias_k = None if mha.bias_k is None else mha.bias_k.detach().clone()
        self.bias_v = None if mha.bias_v is None else mha.bias_v.detach().clone()
        self.heads, self.zero_attn, self.batch_first = H, mha.add_zero_attn, mha.batch_first

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, average_attn_weights=True):  # type: ignore[no-untyped-def]
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)  # (B, L|S, E)
        B, L, E = q.shape
        masked = torch.zeros(B, self.heads, L, k.shape[1], dtype=torch.bool)
        bias = torch.zeros(B, self.heads, L, k.shape[1], dtype=q.dtype)
        if attn_mask is not None:
            m = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(B, self.heads, L, -1)
            if m.dtype == torch.bool:
                masked = masked | m
            else:
                bias = bias + m
        if key_padding_mask is not None and key_padding_mask.dtype == torch.bool:
            masked = masked | key_padding_mask[:, None, None, :]
        elif key_padding_mask is not None:
            bias = bias + key_padding_mask[:, None, None, :]
        extra = []
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(B, 1, E)], 1)
            v = torch.cat([v, self.bias_v.expand(B, 1, E)], 1)
            extra.append(1)
        if self.zero_attn:
            k = torch.cat([k, k.new_zeros(B, 1, E)], 1)
            v = torch.cat([v, v.new_zeros(B, 1, E)], 1)
            extra.append(1)
        pad = sum(extra)
        masked = F.pad(masked, (0, pad), value=False)
        bias = F.pad(bias, (0, pad))
        d = E // self.heads
        heads, weights = [], []
        for h in range(self.heads):
            sl = slice(h * d, (h + 1) * d)
            s = torch.einsum("bld,bsd->bls", q[..., sl], k[..., sl]) / d**0.5 + bias[:, h]
            s = s.masked_fill(masked[:, h], float("-inf"))
            p = torch.softmax(s, -1)
            weights.append(p)
            heads.append(torch.einsum("bls,bsd->bld", p, v[..., sl]))
        out = self.out_proj(torch.cat(heads, -1))
        if not self.batch_first:
            out = out.transpose(0, 1)
        w = torch.stack(weights, 1)  # (B, H, L, S)
        return out, (w.mean(1) if average_attn_weights else w) if need_weights else None


class AttentionNet(nn.Module):
    """Tokens (B, L, E) and a memory (B, S, kdim), (B, S, vdim) -> attention -> pooled logits.

    Per-sample masks come as inputs (batch first, so that one sample can be sliced out):
    ``key_padding_mask`` (B, S) and a 3-D ``attn_mask`` given as (B, H, L, S).
    """

    def __init__(
        self, attn: nn.Module, classes: int, self_attention: bool, batch_first: bool, call: dict, masks: tuple[str, ...]
    ) -> None:
        super().__init__()
        self.attn, self.self_attention, self.batch_first = attn, self_attention, batch_first
        self.call, self.masks = call, masks
        E = attn.embed_dim if isinstance(attn, nn.MultiheadAttention) else attn.q_proj.out_features
        self.head = nn.Linear(E, classes).double()

    def forward(self, x: Tensor, k: Tensor, v: Tensor, *masks: Tensor) -> Tensor:
        t = (lambda z: z) if self.batch_first else (lambda z: z.transpose(0, 1))
        call = dict(self.call)
        for name, m in zip(self.masks, masks):
            call[name] = m if name == "key_padding_mask" else m.flatten(0, 1)
        q_in = t(x)
        if self.self_attention:
            out, w = self.attn(q_in, q_in, q_in, **call)
        else:
            out, w = self.attn(q_in, t(k), t(v), **call)
        out = t(out)  # (B, L, E)
        logits = self.head(out.mean(1))
        if w is not None:  # the weights reach the loss too
            logits = logits + w.pow(2).flatten(1).sum(1, keepdim=True)
        return logits


MHA_CASES = [
    dict(id="self-batch_first-packed", batch_first=True, self_attention=True, need_weights=False),
    dict(id="self-seq_first-packed-weights", batch_first=False, self_attention=True, need_weights=True),
    dict(id="cross-kdim-vdim-nobias", batch_first=True, kdim=3, vdim=5, bias=False, need_weights=True, average=False),
    dict(id="cross-packed-bias_kv-zero_attn", batch_first=True, add_bias_kv=True, add_zero_attn=True, need_weights=True),
    dict(id="masks-float-kpm-float-attn", batch_first=False, kpm="float", attn_mask="float", need_weights=True),
    dict(id="masks-bool-kpm-self", batch_first=True, self_attention=True, kpm="bool", need_weights=True),
    dict(id="masks-bool-3d", batch_first=True, attn_mask="bool3d", need_weights=False, kdim=3, vdim=3),
]


def build_mha(case: dict, B: int, L: int, S: int) -> tuple[AttentionNet, AttentionNet, tuple[Tensor, ...]]:
    torch.manual_seed(4)
    E, H = 6, 2
    mha = nn.MultiheadAttention(
        E, H, bias=case.get("bias", True), add_bias_kv=case.get("add_bias_kv", False),
        add_zero_attn=case.get("add_zero_attn", False), kdim=case.get("kdim"), vdim=case.get("vdim"),
        batch_first=case["batch_first"],
    ).double()
    if mha.in_proj_bias is not None:
        nn.init.normal_(mha.in_proj_bias)
    g = torch.Generator().manual_seed(5)
    call: dict = {"need_weights": case["need_weights"]}
    if case.get("average") is False:
        call["average_attn_weights"] = False
    S_ = L if case.get("self_attention") else S
    masks: dict[str, Tensor] = {}
    if case.get("kpm"):
        kpm = torch.zeros(B, S_, dtype=torch.bool)
        kpm[0, -1] = kpm[1, 0] = True
        masks["key_padding_mask"] = kpm if case["kpm"] == "bool" else torch.zeros(B, S_, dtype=torch.float64).masked_fill(kpm, -1e4)
    if case.get("attn_mask") == "float":
        call["attn_mask"] = torch.randn(L, S_, generator=g, dtype=torch.float64)
    elif case.get("attn_mask") == "bool3d":
        m = torch.rand(B, H, L, S_, generator=g) < 0.3
        m[..., 0] = False  # no row fully masked
        masks["attn_mask"] = m
    explicit = ExplicitAttention(mha)
    self_attention, bf = bool(case.get("self_attention")), case["batch_first"]
    net = AttentionNet(mha, 4, self_attention, bf, call, tuple(masks))
    twin = AttentionNet(explicit, 4, self_attention, bf, call, tuple(masks))
    twin.head.load_state_dict(net.head.state_dict())
    x = torch.randn(B, L, E, generator=g, dtype=torch.float64)
    k = torch.randn(B, S, mha.kdim, generator=g, dtype=torch.float64)
    v = torch.randn(B, S, mha.vdim, generator=g, dtype=torch.float64)
    return net, twin, (x, k, v, *masks.values())


@pytest.mark.parametrize("definition", ["paper", "author_code"])
@pytest.mark.parametrize("case", MHA_CASES, ids=lambda c: c["id"])
def test_multihead_attention_equals_four_linears(case: dict, definition: str) -> None:
    B, L, S = 2, 4, 5
    net, twin, inputs = build_mha(case, B, L, S)
    y = torch.tensor([1, 3])
    with torch.no_grad():  # the twin is right: same outputs as nn.MultiheadAttention
        assert rel_err(twin(*inputs), net(*inputs)) <= 1e-12
    res = emission_absorption(net, inputs, y, definition=definition)
    ref = emission_absorption(twin, inputs, y, definition=definition)
    names = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "head"]
    assert list(res) == names and list(ref) == names
    for n in names:
        for attr in ("emission", "absorption", "norm_sum"):
            assert rel_err(getattr(res[n], attr), getattr(ref[n], attr)) <= TOL, (n, attr)
    assert res.unsupported == {} and res.not_called == {}
    if case.get("add_bias_kv"):
        assert set(res.no_local_gradient) == {"attn.bias_k", "attn.bias_v"}
    ndg_names = {n for n, _ in net.named_modules()}
    assert "attn.out_proj" in ndg_names  # the child module's name is the part's name


def test_multihead_attention_parts_selectable_and_at_root() -> None:
    net, _, inputs = build_mha(MHA_CASES[0], 2, 4, 5)
    y = torch.tensor([0, 1])
    full = emission_absorption(net, inputs, y)
    part = emission_absorption(net, inputs, y, layers=["attn.k_proj", "head"])
    assert list(part) == ["attn.k_proj", "head"]
    assert rel_err(part["attn.k_proj"].emission, full["attn.k_proj"].emission) <= TOL
    assert list(emission_absorption(net, inputs, y, layers="attn")) == ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"]
    mha = net.attn
    x = inputs[0]
    res = emission_absorption(mha, (x, x, x), loss=lambda out, _: out[0].pow(2).sum((1, 2)))
    assert list(res) == ["q_proj", "k_proj", "v_proj", "out_proj"]  # root composite: parts unprefixed


# --------------------------------------------------------------------------------------------
# Swin's ShiftedWindowAttention (torchvision): F.linear on its children's weights
# --------------------------------------------------------------------------------------------


class ExplicitWindowAttention(nn.Module):
    """Shifted-window attention (Liu et al. 2021) written out with qkv/proj called as modules."""

    def __init__(self, swa: nn.Module) -> None:
        super().__init__()
        self.qkv, self.proj = copy.deepcopy(swa.qkv), copy.deepcopy(swa.proj)
        self.window, self.shift, self.heads = list(swa.window_size), list(swa.shift_size), swa.num_heads
        self.bias = swa.get_relative_position_bias().detach()  # (1, heads, N, N)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        wh, ww = self.window
        sh, sw = self.shift
        x = torch.roll(x, (-sh, -sw), (1, 2))
        region = torch.zeros(H, W)
        for i, hs in enumerate((slice(0, -wh), slice(-wh, -sh), slice(-sh, None))):
            for j, ws in enumerate((slice(0, -ww), slice(-ww, -sw), slice(-sw, None))):
                region[hs, ws] = 3 * i + j
        win = lambda t: t.reshape(t.shape[0], H // wh, wh, W // ww, ww, -1).permute(0, 1, 3, 2, 4, 5).reshape(t.shape[0], -1, wh * ww, t.shape[-1])  # noqa: E731
        tokens = win(x)  # (B, nW, N, C)
        ids = win(region[None, :, :, None])[0, :, :, 0]  # (nW, N)
        qkv = self.qkv(tokens.reshape(B, -1, C))  # (B, nW*N, 3C): the tokens of one sample together
        q, k, v = qkv.reshape(B, -1, wh * ww, 3, self.heads, C // self.heads).permute(3, 0, 1, 4, 2, 5)
        s = torch.einsum("bwhnd,bwhmd->bwhnm", q * (C // self.heads) ** -0.5, k) + self.bias[None]
        s = s + torch.where(ids[:, :, None] == ids[:, None, :], 0.0, -100.0)[None, :, None].to(s.dtype)
        o = torch.einsum("bwhnm,bwhmd->bwnhd", torch.softmax(s, -1), v).reshape(B, -1, C)
        o = self.proj(o).reshape(B, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
        return torch.roll(o, (sh, sw), (1, 2))


class WindowNet(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.head = nn.Linear(8, 3).double()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.attn(x).mean((1, 2)))


@pytest.mark.parametrize("definition", ["paper", "author_code"])
def test_shifted_window_attention_equals_explicit_linears(definition: str) -> None:
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    torch.manual_seed(6)
    swa = ShiftedWindowAttention(8, [4, 4], [2, 2], num_heads=2).double()
    net = WindowNet(swa)
    twin = WindowNet(ExplicitWindowAttention(swa))
    twin.head.load_state_dict(net.head.state_dict())
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    y = torch.tensor([2, 0])
    with torch.no_grad():
        assert rel_err(twin.attn(x), swa(x)) <= 1e-12
    res = emission_absorption(net, x, y, definition=definition)
    ref = emission_absorption(twin, x, y, definition=definition)
    assert list(res) == ["attn.qkv", "attn.proj", "head"] == list(ref)
    for n in res:
        for attr in ("emission", "absorption", "norm_sum"):
            assert rel_err(getattr(res[n], attr), getattr(ref[n], attr)) <= TOL, (n, attr)
    assert res["attn.qkv"].emission.shape == (2, 24)  # per sample, not per window
    assert "relative position bias" in res.no_local_gradient["attn.relative_position_bias_table"]
    assert res.not_called == {} and res.unsupported == {}


# --------------------------------------------------------------------------------------------
# Parametrised weights: the weight the forward used
# --------------------------------------------------------------------------------------------


def test_weight_norm_uses_the_parametrised_weight() -> None:
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 5 * 5, 4)).double()
    plain = copy.deepcopy(net)
    parametrizations.weight_norm(net[0])
    parametrizations.weight_norm(net[2])
    with torch.no_grad():
        net[0].parametrizations.weight.original0.mul_(1.7)  # weight != the plain copy's
        for i in (0, 2):
            plain[i].weight.copy_(net[i].weight)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    res = emission_absorption(net, x, y)
    ref = emission_absorption(plain, x, y)
    assert list(res) == ["0", "2"] and res.unsupported == {} and res.no_local_gradient == {}
    for n in res:
        assert rel_err(res[n].emission, ref[n].emission) <= TOL and rel_err(res[n].absorption, ref[n].absorption) <= TOL


def test_spectral_norm_in_train_mode_author_code() -> None:
    """Train mode runs a power iteration at each forward: the handler sees that forward's weight,
    and the iteration's vectors (buffers) are put back."""
    torch.manual_seed(8)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 3)).double()
    parametrizations.spectral_norm(net[0])
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    used = copy.deepcopy(net).train()
    with torch.no_grad():
        w_used = used[0].weight.clone()  # one power iteration from the stored vectors, as each forward does
    plain = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 3)).double()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if "parametrizations" not in k}, strict=False)
    with torch.no_grad():
        plain[0].weight.copy_(w_used)
        plain[0].bias.copy_(net[0].bias)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    res = emission_absorption(net, x, y, definition="author_code")
    ref = emission_absorption(plain, x, y, definition="author_code")
    for n in ("0", "3"):
        assert rel_err(res[n].emission, ref[n].emission) <= TOL and rel_err(res[n].absorption, ref[n].absorption) <= TOL
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not net.training


# --------------------------------------------------------------------------------------------
# What is not measured: named, with the reason
# --------------------------------------------------------------------------------------------


class TokenEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, 5, 4))
        self.ln = nn.LayerNorm(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x + self.pos_embedding)


class TinyViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.class_token = nn.Parameter(torch.randn(1, 1, 4))
        self.encoder = TokenEncoder()
        self.head = nn.Linear(4, 3)

    def forward(self, ids: Tensor) -> Tensor:
        t = torch.cat([self.class_token.expand(ids.shape[0], -1, -1), self.embed(ids)], 1)
        return self.head(self.encoder(t)[:, 0])


def test_containers_embeddings_and_root_name() -> None:
    torch.manual_seed(9)
    vit = TinyViT().double()
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    res = emission_absorption(vit, ids, torch.tensor([0, 2]))
    assert list(res) == ["head"] and res.unsupported == {}
    assert list(res.no_local_gradient) == ["class_token", "embed", "encoder.pos_embedding", "encoder.ln"]
    assert "index lookup" in res.no_local_gradient["embed"]
    assert "held directly by TinyViT" in res.no_local_gradient["class_token"]

    lone = nn.Linear(3, 2).double()
    res = emission_absorption(lone, torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1]))
    assert list(res) == ["(model)"]
    assert list(emission_absorption(lone, torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1]), layers="(model)")) == ["(model)"]
    with pytest.raises(NndistError, match=r"valid names: \(model\)"):
        emission_absorption(lone, torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1]), layers="x")

    class Leaf(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))

        def forward(self, x: Tensor) -> Tensor:
            return x @ self.m

    assert emission_absorption(Leaf(), torch.randn(2, 3, dtype=torch.float64), loss="logit").unsupported == {"(model)": "Leaf"}


def test_torchvision_container_parameters_have_their_reasons() -> None:
    from torchvision.models.convnext import CNBlock

    block = CNBlock(8, layer_scale=1e-6, stochastic_depth_prob=0.0).double()
    res = emission_absorption(block, torch.randn(2, 8, 7, 7, dtype=torch.float64), loss=lambda out, _: out.pow(2).sum((1, 2, 3)))
    assert res.no_local_gradient["layer_scale"].startswith("layer scale")
    assert list(res) == ["block.0", "block.3", "block.5"] and res.unsupported == {}


def test_not_called_is_reported() -> None:
    class Functional(nn.Module):
        """Uses its child's weight through F.linear (no handler for the parent): the child never runs."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(3, 3)
            self.unused = nn.Conv1d(1, 1, 1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(F.linear(x, self.inner.weight, self.inner.bias))

    res = emission_absorption(Functional().double(), torch.randn(2, 3, dtype=torch.float64), loss="logit")
    assert list(res) == ["fc"] and res.not_called == {"inner": "Linear", "unused": "Conv1d"}


def test_handler_by_qualified_name_and_definitions() -> None:
    class Doubling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(2, 2, dtype=torch.float64))

        def forward(self, x: Tensor) -> Tensor:
            return x @ self.w.T

    qual = f"{Doubling.__module__}.{Doubling.__qualname__}"

    def paper_only(module: nn.Module, input: Tensor, grad_output: Tensor) -> LayerGradients:
        return ndg.linear_local_gradient_norms(module.w.detach(), grad_output)

    ndg.register_handler(qual, paper_only)
    try:
        assert Doubling in HANDLERS and "Doubling" in HANDLERS.names()
        model = nn.Sequential(Doubling(), nn.Linear(2, 3).double())
        x = torch.randn(2, 2, dtype=torch.float64)
        assert list(emission_absorption(model, x, loss="logit")) == ["0", "1"]
        with pytest.raises(NndistError, match="computes only paper"):
            emission_absorption(model, x, torch.tensor([0, 1]), definition="author_code")
        assert list(emission_absorption(model, x, torch.tensor([0, 1]), layers=["1"], definition="author_code")) == ["1"]
    finally:
        HANDLERS.remove(qual)
    assert Doubling not in HANDLERS
    with pytest.raises(NndistError, match="unknown definition"):
        emission_absorption(nn.Linear(2, 2), torch.randn(1, 2), loss="logit", definition="code")
