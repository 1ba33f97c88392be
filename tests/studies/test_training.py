"""Training runs together: the hand-written paper-CNN forward against the module's own, and each run against training it alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from nndist.errors import NndistError
from nndist.inits import PAPER_INITS, init_model
from nndist.models import PaperCNN, create_model
from nndist.studies.training import FAST_FORWARDS, RunSet, paper_cnn_forward, run_adam


def _models(inits, dtype=torch.float64, num_classes=10):
    out = []
    for s in inits:
        m = PaperCNN(num_classes) if num_classes != 10 else create_model("paper_cnn")
        init_model(m, s, generator=3)
        out.append(m.to(dtype))
    return out


def _integer_models(runs: int, seed: int = 0):
    """Models with small integer weights: every sum below is exact in float64, ties included."""
    g = torch.Generator().manual_seed(seed)
    models = []
    for _ in range(runs):
        m = create_model("paper_cnn").double()
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randint(-2, 3, p.shape, generator=g).double())
        models.append(m)
    return models


def test_paper_cnn_has_the_hand_written_forward():
    assert FAST_FORWARDS[PaperCNN] is paper_cnn_forward
    assert RunSet(_models(["zeros"])).fast_forward is paper_cnn_forward
    assert RunSet(_models(["zeros"]), fast=False).fast_forward is None


def test_exact_arithmetic_equals_each_model_alone_bit_for_bit():
    """Integer weights and inputs with many ties in every max pooling: outputs and gradients equal
    those of each model alone exactly, so the pooling picks the same element (pool before ReLU)."""
    models = _integer_models(3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-1, 2, (5, 3, 32, 32), generator=g).double()  # few values: ties everywhere
    weights = torch.randint(-3, 4, (3, 5, 10), generator=g).double()
    runs = RunSet(models)
    out = runs.forward(x)
    (out * weights).sum().backward()
    for r, m in enumerate(models):
        alone = m(x)
        assert torch.equal(out[r], alone)
        (alone * weights[r]).sum().backward()
        trained = dict(runs.models[r].named_parameters())
        for name, p in m.named_parameters():
            assert torch.equal(trained[name].grad, p.grad), name
            assert p.grad.abs().sum() > 0, name  # a real comparison, not of zeros


@pytest.mark.parametrize("num_classes", [10, 7])
def test_float64_fast_equals_own_forward_and_alone(num_classes):
    models = _models(PAPER_INITS[:5], num_classes=num_classes)
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.randint(0, num_classes, (6,))
    fast, slow = RunSet(models), RunSet(models, fast=False)
    loss_fast, out_fast = fast.losses(x, y)
    loss_slow, out_slow = slow.losses(x, y)
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-12, atol=1e-12)
    loss_fast.sum().backward()
    loss_slow.sum().backward()
    for r, m in enumerate(models):
        m.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        assert loss_fast[r].item() == pytest.approx(loss.item(), rel=1e-12)
        fast_p, slow_p = dict(fast.models[r].named_parameters()), dict(slow.models[r].named_parameters())
        for name, p in m.named_parameters():
            torch.testing.assert_close(fast_p[name].grad, p.grad, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(slow_p[name].grad, p.grad, rtol=1e-10, atol=1e-12)


def test_float32_fast_forward_is_within_rounding_of_float64():
    models32 = _models(PAPER_INITS[:5], dtype=torch.float32)
    models64 = [copy.deepcopy(m).double() for m in models32]
    x = torch.randn(8, 3, 32, 32)
    out32 = RunSet(models32).forward(x)
    out64 = RunSet(models64).forward(x.double())
    scale = out64.abs().amax(dim=(1, 2), keepdim=True)
    assert ((out32.double() - out64).abs() / scale).max() < 1e-5


def test_wrong_input_shape_still_gets_the_models_error():
    runs = RunSet(_models(["orthogonal"], dtype=torch.float32))
    with pytest.raises(NndistError, match="3x32x32"):
        runs.forward(torch.randn(2, 3, 16, 16))


def test_run_adam_equals_plain_adam():
    """The fused Adam makes the same updates as the default one (float64, 3 steps)."""
    a, b = RunSet(_models(["kaiming_normal", "xavier_uniform"])), RunSet(_models(["kaiming_normal", "xavier_uniform"]))
    start = [p.detach().clone() for p in a.parameters()]
    opt_a = run_adam(a, lr=1e-3, weight_decay=1e-2)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3, weight_decay=1e-2)
    torch.manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
        for runs, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            runs.losses(x, y)[0].sum().backward()
            opt.step()
    for i, (pa, pb) in enumerate(zip(a.parameters(), b.parameters())):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-15)
        assert not torch.equal(pa, start[i]), i  # the steps moved every parameter


def _train(runs: RunSet, steps: int, seed: int = 0) -> None:
    opt = run_adam(runs, lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
        runs.step(opt, x, y)


def test_runs_together_equal_each_alone_bit_for_bit_in_float32():
    """A run's arithmetic does not depend on the runs beside it: 5 float32 Adam steps of 5 runs
    together, of 2 and 3 (as two processes would hold them) and of each alone give identical
    parameters, so a study split over processes equals the one-process study on any machine."""
    models = _models(PAPER_INITS[:5], dtype=torch.float32)
    together = RunSet(models)
    _train(together, 5)
    parts = [RunSet(models[:2]), RunSet(models[2:])]
    alone = [RunSet([m]) for m in models]
    for runs in parts + alone:
        _train(runs, 5)
    held = [m for runs in parts for m in runs.models]
    for r, m in enumerate(models):
        for (name, p), q, a, start in zip(together.models[r].named_parameters(), held[r].parameters(),
                                          alone[r].models[0].parameters(), m.parameters()):
            assert torch.equal(p, q) and torch.equal(p, a), name
            if name.endswith("weight") and r < 4:  # zeros (r = 4) only trains fc2's bias
                assert not torch.equal(p, start), name


def test_a_diverged_run_is_frozen_and_the_others_train_as_alone():
    models = _models(["orthogonal", "xavier_uniform"], dtype=torch.float32)
    with torch.no_grad():
        models[0].fc2.bias.fill_(float("nan"))
    runs, alone = RunSet(models), RunSet(models[1:])
    opt = run_adam(runs, lr=1e-3)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss, out, newly = runs.step(opt, x, y)
    assert newly == [0] and bool(runs.frozen[0]) and not bool(runs.frozen[1])
    assert not torch.isfinite(loss[0]) and torch.isfinite(loss[1]) and out.shape == (2, 8, 10)
    alone.step(run_adam(alone, lr=1e-3), x, y)
    assert torch.equal(runs.models[0].conv1.weight, models[0].conv1.weight)  # frozen: untouched
    for p, q in zip(runs.models[1].parameters(), alone.models[0].parameters()):
        assert torch.equal(p, q)


def test_state_of_earlier_versions_loads(tmp_path):
    """Stacked parameters and their Adam state (state files of versions 2 and 3) load per run."""
    models = _models(["orthogonal", "kaiming_normal"], dtype=torch.float32)
    runs = RunSet(models)
    opt = run_adam(runs, lr=1e-3)
    _ = [runs.step(opt, torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    names = [n for n, _ in models[0].named_parameters()]
    per_run = [dict(m.named_parameters()) for m in runs.models]
    stacked = {
        "params": {n: torch.stack([p[n].detach() for p in per_run]) for n in names},
        "buffers": {},
        "frozen": torch.tensor([False, True]),
        "frozen_values": {},
    }
    new_state = opt.state_dict()
    k = len(names)
    legacy_opt = {
        "state": {i: {"step": new_state["state"][i]["step"],
                      "exp_avg": torch.stack([new_state["state"][r * k + i]["exp_avg"] for r in range(2)]),
                      "exp_avg_sq": torch.stack([new_state["state"][r * k + i]["exp_avg_sq"] for r in range(2)])}
                  for i in range(k)},
        "param_groups": [dict(new_state["param_groups"][0], params=list(range(k)))],
    }
    from nndist.studies.training import load_optimizer_state

    fresh = RunSet(_models(["zeros", "zeros"], dtype=torch.float32))
    fresh_opt = run_adam(fresh, lr=1e-3)
    fresh.load_state_dict(stacked)
    load_optimizer_state(fresh_opt, legacy_opt, fresh)
    assert fresh.frozen.tolist() == [False, True]
    for a, b in zip(runs.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    for i in range(2 * k):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(fresh_opt.state_dict()["state"][i][key], new_state["state"][i][key])
