"""``definition="author_code"`` against the author's procedure written out, the identities under each
definition, the model left as it was, and the author's layer indices (torchvision ResNets, offline)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from test_gradients import CONV_CASES, assert_no_hooks, make_conv
from test_gradients_literal import (
    SAME_PADDING_COPY,
    channel_grad_norms,
    grad_at_output,
    literal_local_gradients,
    literal_stats,
    rel_err,
)
from torch import Tensor, nn

import nndist.probes.gradients as ndg
from nndist.errors import NndistError
from nndist.probes.gradients import AUTHOR_TARGET_LAYERS, TrainModeNotice, author_seed, emission_absorption, layers_like_author

TOL = 1e-10
pytestmark = pytest.mark.filterwarnings(SAME_PADDING_COPY)


# --------------------------------------------------------------------------------------------
# The code's procedure, written out (fxnnxc/hex channel_gradients, commit 6f6060e)
# --------------------------------------------------------------------------------------------

MAX_SAMPLES = 15  # hook_wrapper.py line 17


def build_backward_conv2d_hook(ems: list[Tensor], outs: list[Tensor]):  # type: ignore[no-untyped-def]
    """hook_wrapper.py 6-39, storing into ``ems`` (emission_holder) and ``outs`` (bw_out_holder)."""

    def backward_conv2d_hook(module, grad_inputs, grad_outputs):  # type: ignore[no-untyped-def]
        weight = module.weight
        new_weight = weight.clone()
        new_grad_inputs = torch.nn.grad.conv2d_input(
            grad_inputs[0].shape, new_weight, grad_outputs[0],
            stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups,
        )
        weight_temp = weight.clone()
        em = []
        for k in range(min(weight_temp.size(0), MAX_SAMPLES)):
            channel_weight = weight_temp[k, ...].unsqueeze(0).clone()
            channel_grads = grad_outputs[0][:, k, ...].unsqueeze(1).clone()
            emitted_grads = torch.nn.grad.conv2d_input(
                grad_inputs[0].shape, channel_weight, channel_grads,
                stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups,
            )
            em.append(emitted_grads.norm().item())
        grads_out = grad_outputs[0][0][:MAX_SAMPLES]
        grads_out = grads_out.reshape(grads_out.size(0), -1).norm(dim=-1)
        outs.append(grads_out.detach().clone())
        ems.append(torch.tensor(em, dtype=torch.float64))
        return [new_grad_inputs]

    return backward_conv2d_hook


def run_like_the_code(model: nn.Module, targets: list[str], images: Tensor, labels: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """The loop of run.py 97-112 on CPU, with the code's hook on each target layer.

    The code hooks one target layer per run; the hooks return the gradient they receive, so
    hooking several at once measures the same. Returns ``{layer: (Em, Ab)}``, ``(N, 15)`` each.
    """
    holders: dict[str, tuple[list[Tensor], list[Tensor]]] = {t: ([], []) for t in targets}
    handles = [model.get_submodule(t).register_full_backward_hook(build_backward_conv2d_hook(*holders[t])) for t in targets]
    model.train()  # run.py line 68
    try:
        for x, y in zip(images, labels):
            x = x.unsqueeze(0).requires_grad_(True)  # run.py 99, 103: one image per pass
            y = y.unsqueeze(0)
            model.zero_grad()
            output = model(x)
            score = torch.softmax(output, dim=-1)
            class_score = torch.zeros(x.size(0), output.size()[-1], dtype=output.dtype)
            class_index = y
            class_score[:, class_index] = score[:, class_index]
            output.backward(gradient=class_score)
    finally:
        for h in handles:
            h.remove()
    return {t: (torch.stack(em), torch.stack(ab)) for t, (em, ab) in holders.items()}


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(10)
    model = torchvision.models.resnet18(weights=None, num_classes=7).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial affine and running statistics
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(3)
    return model.eval()


@pytest.mark.slow
def test_author_code_equals_the_code_on_resnet18(resnet18: nn.Module) -> None:
    """The code's own layers for ResNet-18 (run_18.sh), its hook and its loop, in float64."""
    g = torch.Generator().manual_seed(11)
    images = torch.randn(2, 3, 48, 48, generator=g, dtype=torch.float64)  # 2x2 at layer4
    labels = torch.tensor([3, 5])
    names = [layers_like_author(18)[i] for i in AUTHOR_TARGET_LAYERS[18]]
    assert names == ["conv1", "layer1.0.conv1", "layer2.0.conv2", "layer3.0.conv1", "layer4.1.conv2"]
    before = copy.deepcopy(resnet18.state_dict())
    res = emission_absorption(resnet18, images, labels, layers=names, definition="author_code")
    assert res.definition == "author_code"
    code = run_like_the_code(copy.deepcopy(resnet18), names, images, labels)
    for name in names:
        em, ab = code[name]
        assert rel_err(res[name].emission[:, :MAX_SAMPLES], em) <= TOL, name
        assert rel_err(res[name].absorption[:, :MAX_SAMPLES], ab) <= TOL, name
        c_out = resnet18.get_submodule(name).out_channels
        assert res[name].emission.shape == (2, c_out) and res[name].absorption.shape == (2, c_out)
    after = resnet18.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats and counters too
    assert not resnet18.training and not any(m.training for m in resnet18.modules())
    assert_no_hooks(resnet18)


# --------------------------------------------------------------------------------------------
# Both definitions against the literal twin, and the identities under each
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_conv2d_author_code_against_literal(case: dict) -> None:
    conv = make_conv(case)
    x = torch.randn(2, case["c_in"], 9, 8, dtype=torch.float64)
    G, _ = grad_at_output(conv, x)
    res = ndg.conv2d_handler(conv, x, G, definition="author_code")
    lg = literal_local_gradients(conv, x, G)
    em, ab, ns = literal_stats(lg, "author_code", channel_grad_norms(conv, G))
    assert rel_err(res.emission, em) <= TOL and rel_err(res.absorption, ab) <= TOL and rel_err(res.norm_sum, ns) <= TOL


IDENTITY_LAYERS = [
    (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (1, 4, 7, 6)),
    (nn.Conv1d(3, 5, 4, dilation=2, padding="same"), (1, 3, 10)),
    (nn.ConvTranspose2d(3, 4, 3, stride=2, output_padding=1), (1, 3, 4, 4)),
    (nn.Conv3d(2, 3, (1, 3, 2), stride=(1, 2, 1)), (1, 2, 3, 5, 4)),
    (nn.Linear(5, 4), (1, 3, 5)),
]


@pytest.mark.parametrize("module, shape", IDENTITY_LAYERS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
def test_identities_under_each_definition(module: nn.Module, shape: tuple[int, ...]) -> None:
    """paper: sum_c1 Em = sum_c2 Ab. author_code (one sample): sum_c1 Em^2 = sum_{c1,c2} ||LG||^2;
    Ab = ||G[c1]||; Em_code <= Em_paper <= sqrt(C_in/groups) Em_code; Em_code <= Ab * sqrt(sum_c2 ||W[c1,c2]||_1^2);
    a linear layer has Em_code = Ab * ||W[c1]||. The paper's sum Em = sum Ab does not hold under author_code."""
    torch.manual_seed(12)
    module = module.double()
    x = torch.randn(shape, dtype=torch.float64)
    G, _ = grad_at_output(module, x)
    handler = ndg.HANDLERS.get(type(module))
    paper = handler(module, x, G, definition="paper")  # type: ignore[call-arg]
    code = handler(module, x, G, definition="author_code")  # type: ignore[call-arg]
    assert rel_err(paper.emission.sum(1), paper.absorption.sum(1)) <= TOL
    assert rel_err((code.emission**2).sum(1), (code.norm_sum**2).sum().reshape(1)) <= TOL  # B = 1: norm_sum is that sample's
    assert rel_err(code.absorption, channel_grad_norms(module, G)) <= TOL
    assert torch.equal(code.norm_sum, paper.norm_sum)
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    W = module.weight.detach()
    groups = getattr(module, "groups", 1)
    if transposed:  # (C_in, C_out/g, K) -> (C_out, C_in/g, K)
        W = W.reshape(groups, W.shape[0] // groups, W.shape[1], -1).permute(0, 2, 1, 3).reshape(-1, W.shape[0] // groups, W[0, 0].numel())
    cin_g = W.shape[1]
    slack = 1 + 1e-12
    assert (code.emission <= paper.emission * slack).all() and (paper.emission <= cin_g**0.5 * code.emission * slack).all()
    row_l1 = W.reshape(W.shape[0], cin_g, -1).abs().sum(2).pow(2).sum(1).sqrt()  # (C_out,)
    assert (code.emission <= code.absorption * row_l1 * slack).all()
    if isinstance(module, nn.Linear):
        assert rel_err(code.emission, code.absorption * W.norm(dim=1)) <= TOL
    assert rel_err(code.emission.sum(1), code.absorption.sum(1)) > 1e-3  # different quantities


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def bn_net() -> BNNet:
    torch.manual_seed(13)
    net = BNNet().double()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.num_batches_tracked.fill_(7)
    return net


def test_author_code_seed_mode_and_batch_against_autograd() -> None:
    """G under the code's seed, train-mode BatchNorm, one sample at a time, by plain autograd."""
    net = bn_net().eval()
    x = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    y = torch.tensor([4, 0, 2])
    res = emission_absorption(net, x, y, definition="author_code")
    assert list(res) == ["conv", "fc"]
    ref = copy.deepcopy(net).train()
    for b in range(3):
        a = x[b : b + 1]
        v = ref.conv(a)
        out = ref.fc(F.relu(ref.bn(v)).mean((2, 3)))
        p = torch.softmax(out, -1)[0, y[b]].detach()
        (G,) = torch.autograd.grad(out[0, y[b]] * p, v)  # the gradient of the code's seed p_y e_y
        em, ab, _ = literal_stats(literal_local_gradients(net.conv, a, G), "author_code", channel_grad_norms(net.conv, G))
        assert rel_err(res["conv"].emission[b], em[0]) <= TOL and rel_err(res["conv"].absorption[b], ab[0]) <= TOL
    # the per-sample train-mode batch statistics matter: a batched eval-mode pass differs
    paper = emission_absorption(net, x, y)
    assert rel_err(paper["conv"].norm_sum, res["conv"].norm_sum) > 1e-3


def test_author_seed_is_the_codes_class_score() -> None:
    out = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 5, 0])
    (seed,) = torch.autograd.grad(author_seed(out, y).sum(), out)
    class_score = torch.zeros(3, 6, dtype=torch.float64)
    score = torch.softmax(out, dim=-1).detach()
    class_score[torch.arange(3), y] = score[torch.arange(3), y]  # run.py 108-111, per row
    assert rel_err(seed, class_score) <= 1e-15


# --------------------------------------------------------------------------------------------
# The model is left as it was
# --------------------------------------------------------------------------------------------


def test_author_code_restores_state_flags_and_hooks() -> None:
    net = bn_net().train()
    net.bn.eval()  # mixed flags come back exactly
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    emission_absorption(net, x, torch.tensor([0, 1]), definition="author_code")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.bn.num_batches_tracked.item() == 7
    assert net.training and net.conv.training and not net.bn.training
    assert_no_hooks(net)


def test_author_code_restores_after_an_exception() -> None:
    class FailsOnSecond(BNNet):
        calls = 0

        def forward(self, x: Tensor) -> Tensor:
            out = super().forward(x)
            FailsOnSecond.calls += 1
            if FailsOnSecond.calls == 2:
                raise RuntimeError("boom")
            return out

    torch.manual_seed(14)
    net = FailsOnSecond().double().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(RuntimeError, match="boom"):
        emission_absorption(net, torch.randn(3, 3, 5, 5, dtype=torch.float64), torch.tensor([0, 1, 2]), definition="author_code")
    assert FailsOnSecond.calls == 2
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(m.training for m in net.modules())
    assert_no_hooks(net)


def test_author_code_errors_and_notice() -> None:
    net = bn_net()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    with pytest.raises(NndistError, match="needs targets"):
        emission_absorption(net, x, definition="author_code")
    with pytest.raises(NndistError, match="leave loss at its default"):
        emission_absorption(net, x, torch.tensor([0, 1]), loss="logit", definition="author_code")
    with pytest.raises(NndistError, match="batch first"):
        emission_absorption(net, (x, torch.ones(3)), torch.tensor([0, 1]), definition="author_code")
    dropped = nn.Sequential(nn.Flatten(), nn.Linear(75, 5), nn.Dropout(0.3), nn.Linear(5, 3)).double()
    with pytest.warns(TrainModeNotice, match="2 are random"):
        emission_absorption(dropped, x, torch.tensor([0, 1]), definition="author_code")


# --------------------------------------------------------------------------------------------
# The code's layer indices (hook_wrapper.py 75-103) on random-weight torchvision ResNets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, count", [(18, 17), (34, 33), (50, 49)])
def test_layers_like_author_on_torchvision_resnets(depth: int, count: int) -> None:
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    names = layers_like_author(model)
    assert names == layers_like_author(depth) and len(names) == count
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], nn.Conv2d) for n in names)
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    assert [n for n in convs if n not in names] == [n for n in convs if "downsample" in n]  # only those skipped
    assert names == [n for n in convs if "downsample" not in n]  # in forward order
    assert names[0] == "conv1" and names[1] == "layer1.0.conv1"
    per_block = 3 if depth >= 50 else 2
    assert names[1 + per_block] == "layer1.1.conv1"
    assert max(AUTHOR_TARGET_LAYERS[depth]) < count


def test_layers_like_author_deeper_and_errors() -> None:
    assert len(layers_like_author(101)) == 100 and len(layers_like_author(152)) == 151
    assert layers_like_author(152)[150] == "layer4.2.conv3"
    with pytest.raises(NndistError, match="known: \\[18, 34, 50, 101, 152\\]"):
        layers_like_author(20)
    with pytest.raises(NndistError, match="not a torchvision-style ResNet"):
        layers_like_author(nn.Sequential(nn.Conv2d(1, 1, 1)))
