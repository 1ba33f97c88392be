"""The eval-mode BatchNorm fold of the measuring pass: the same numbers as the model run as it is."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nndist.probes.gradients import emission_absorption, fold

TOL = 1e-12


def _stats(bn: nn.modules.batchnorm._BatchNorm) -> None:
    with torch.no_grad():  # running statistics and affine parameters far from the identity
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 3.0)
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)


class Net(nn.Module):
    """Conv-BN pairs of 1, 2 and 3 dimensions, one without affine parameters, one conv without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 5, 3, padding=1)
        self.b1 = nn.BatchNorm2d(5)
        self.c2 = nn.Conv2d(5, 4, 3, stride=2, padding=1, bias=False, groups=1)
        self.b2 = nn.BatchNorm2d(4, affine=False)
        self.c3 = nn.Conv1d(4, 6, 3, padding=1, dilation=1)
        self.b3 = nn.BatchNorm1d(6)
        self.c4 = nn.Conv3d(1, 2, 3, padding=1)
        self.b4 = nn.BatchNorm3d(2)
        self.fc = nn.Linear(6 + 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))  # (B, 4, 4, 4)
        line = torch.tanh(self.b3(self.c3(x.flatten(2))))  # (B, 6, 16)
        vol = torch.tanh(self.b4(self.c4(x.unsqueeze(1))))  # (B, 2, 4, 4, 4)
        return self.fc(torch.cat([line.mean(2), vol.mean((2, 3, 4))], 1))


def net() -> Net:
    torch.manual_seed(0)
    model = Net().double()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _stats(m)
    return model.eval()


def batch(b: int = 4) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, 8, 8, dtype=torch.float64, generator=g), torch.randint(0, 3, (b,), generator=g)


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def assert_same(folded: dict, plain: dict) -> None:
    assert folded.keys() == plain.keys() and plain
    for name in plain:
        for attr in ("emission", "absorption", "norm_sum"):
            assert rel(getattr(folded[name], attr), getattr(plain[name], attr)) <= TOL, (name, attr)


def unfolded(model: nn.Module, x: Tensor, y: Tensor, **kw) -> dict:  # type: ignore[no-untyped-def]
    with fold.disabled():
        return emission_absorption(model, x, y, **kw)


def test_every_pair_folds_and_gives_the_unfolded_numbers() -> None:
    model, (x, y) = net(), batch()
    res = emission_absorption(model, x, y)
    assert set(fold._TRACES[model].pairs) == {("c1", "b1"), ("c2", "b2"), ("c3", "b3"), ("c4", "b4")}
    assert_same(res, unfolded(model, x, y))
    # the unfolded numbers are the BatchNorm's: scaling its running variance changes them
    with torch.no_grad():
        model.b1.running_var.mul_(4.0)
    again = emission_absorption(model, x, y)
    assert rel(again["c1"].emission, res["c1"].emission) > 0.1
    assert_same(again, unfolded(model, x, y))  # the fold reads the values the model holds now


def test_the_folded_graph_has_no_batchnorm_and_the_model_is_untouched() -> None:
    model, (x, y) = net(), batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    convs = [model.c1, model.c2, model.c3, model.c4]
    with fold.folded(model, convs) as (runner, replaced):
        assert isinstance(runner, torch.fx.GraphModule)
        called = [runner.get_submodule(n.target) for n in runner.graph.nodes if n.op == "call_module"]
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in called)
        assert set(replaced) == {id(c) for c in convs} and all(replaced[id(c)] is not c for c in convs)
        scale = model.b1.weight / torch.sqrt(model.b1.running_var + model.b1.eps)
        assert torch.allclose(replaced[id(model.c1)].weight, model.c1.weight * scale.view(-1, 1, 1, 1), rtol=1e-14)
    assert all(runner.get_submodule(n) is getattr(model, n) for n in ("c1", "c2", "c3", "c4"))  # slots restored
    emission_absorption(model, x, y)
    assert [id(p) for p in model.parameters()] == params
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class Shared(nn.Module):
    """The first conv's output also feeds a skip connection; the second pair is clean."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.c2, self.b2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        v = self.c1(x)
        x = F.relu(self.b1(v)) + v
        return self.fc(F.relu(self.b2(self.c2(x))).mean((2, 3)))


class Branchy(nn.Module):
    """A forward that branches on a value of the data: it does not trace."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.b, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        v = self.b(self.c(x))
        if v.sum() > 0:
            v = v * 2
        return self.fc(v.mean((2, 3)))


def _prepared(model: nn.Module) -> nn.Module:
    model = model.double()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _stats(m)
    return model.eval()


def test_what_cannot_be_proved_is_not_folded() -> None:
    torch.manual_seed(2)
    x, y = batch()
    shared = _prepared(Shared())
    assert_same(emission_absorption(shared, x, y), unfolded(shared, x, y))
    assert fold._TRACES[shared].pairs == (("c2", "b2"),)  # c1's output has two users

    branchy = _prepared(Branchy())
    assert_same(emission_absorption(branchy, x, y), unfolded(branchy, x, y))
    assert fold._TRACES[branchy].graph_module is None

    model = net()
    handle = model.b2.register_forward_hook(lambda m, a, o: None)  # a user's hook must see the BatchNorm run
    try:
        with fold.folded(model, [model.c1]) as (runner, replaced):
            assert runner is model and not replaced
        assert_same(emission_absorption(model, x, y), unfolded(model, x, y))
    finally:
        handle.remove()
    with fold.folded(model, [model.fc, nn.Linear(2, 2)]) as (runner, _):  # a studied module the graph does not call
        assert runner is model


def test_a_changed_model_is_traced_again() -> None:
    model, (x, y) = net(), batch()
    emission_absorption(model, x, y)
    first = fold._TRACES[model]
    emission_absorption(model, x, y)
    assert fold._TRACES[model] is first  # cached
    model.c1 = nn.Conv2d(3, 5, 3, padding=1).double()  # a new module object: the graph must follow it
    res = emission_absorption(model, x, y)
    assert fold._TRACES[model] is not first
    assert_same(res, unfolded(model, x, y))


def test_a_hook_anywhere_keeps_the_model_as_it_is() -> None:
    class Wrapped(nn.Module):  # a container whose hook the traced graph would not run
        def __init__(self) -> None:
            super().__init__()
            self.inner = net()

        def forward(self, x: Tensor) -> Tensor:
            return self.inner(x)

    model, (x, y) = Wrapped().eval(), batch()
    seen = []
    handle = model.inner.register_forward_pre_hook(lambda m, a: seen.append(1))
    try:
        with fold.folded(model, [model.inner.c1]) as (runner, _):
            assert runner is model
        res = emission_absorption(model, x, y)
        assert seen  # the user's hook ran
        assert_same(res, unfolded(model, x, y))
    finally:
        handle.remove()
    with fold.folded(model, [model.inner.c1]) as (runner, _):
        assert runner is not model  # without the hook it folds


def test_a_wrapper_is_not_traced(monkeypatch) -> None:  # noqa: ANN001
    traced = []
    real = torch.fx.symbolic_trace
    monkeypatch.setattr(torch.fx, "symbolic_trace", lambda m, *a, **k: traced.append(m) or real(m, *a, **k))
    inner = net()
    model, (x, y) = nn.DataParallel(inner), batch()  # on the CPU it calls the module
    res = emission_absorption(model, x, y)
    assert not traced and fold._TRACES[model].graph_module is None  # its forward never ran symbolically
    assert_same(res, unfolded(model, x, y))
    emission_absorption(inner, x, y)
    assert traced == [inner]  # the spy sees a plain model traced


def test_the_folded_copy_shares_no_table_with_the_original() -> None:
    model = net()
    with fold.folded(model, [model.c1]) as (_, replaced):
        copy_ = replaced[id(model.c1)]
        handle = copy_.register_forward_hook(lambda m, a, o: None)
        assert not model.c1._forward_hooks and copy_._forward_hooks  # a hook on the copy stays there
        handle.remove()
        assert copy_._parameters is not model.c1._parameters and model.c1.weight is not copy_.weight
        assert copy_.stride == model.c1.stride and copy_.padding == model.c1.padding


def test_half_precision_is_not_folded() -> None:
    model = net().to(torch.bfloat16)
    with fold.folded(model, [model.c1]) as (runner, replaced):
        assert runner is model and not replaced
    model.float()
    with fold.folded(model, [model.c1]) as (runner, replaced):
        assert runner is not model and id(model.c1) in replaced
