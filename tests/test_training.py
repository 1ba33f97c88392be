"""The stacked training: the hand-written paper-CNN forward against vmap and against each model alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from nndist.errors import NndistError
from nndist.inits import PAPER_INITS, init_model
from nndist.models import PaperCNN, create_model
from nndist.training import STACKED_FORWARDS, StackedRuns, paper_cnn_stacked, stacked_adam


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
    assert STACKED_FORWARDS[PaperCNN] is paper_cnn_stacked
    assert StackedRuns(_models(["zeros"]))._stacked_forward is paper_cnn_stacked
    assert StackedRuns(_models(["zeros"]), fast=False)._stacked_forward is None


def test_exact_arithmetic_equals_each_model_alone_bit_for_bit():
    """Integer weights and inputs with many ties in every max pooling: outputs and gradients equal
    those of each model alone exactly, so the pooling picks the same element (pool before ReLU)."""
    models = _integer_models(3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-1, 2, (5, 3, 32, 32), generator=g).double()  # few values: ties everywhere
    weights = torch.randint(-3, 4, (3, 5, 10), generator=g).double()
    runs = StackedRuns(models)
    out = runs.forward(x)
    (out * weights).sum().backward()
    for r, m in enumerate(models):
        alone = m(x)
        assert torch.equal(out[r], alone)
        (alone * weights[r]).sum().backward()
        for name, p in m.named_parameters():
            assert torch.equal(runs.params[name].grad[r], p.grad), name
            assert p.grad.abs().sum() > 0, name  # a real comparison, not of zeros


@pytest.mark.parametrize("num_classes", [10, 7])
def test_float64_fast_equals_vmap_and_alone(num_classes):
    models = _models(PAPER_INITS[:5], num_classes=num_classes)
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.randint(0, num_classes, (6,))
    fast, slow = StackedRuns(models), StackedRuns(models, fast=False)
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
        for name, p in m.named_parameters():
            torch.testing.assert_close(fast.params[name].grad[r], p.grad, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(slow.params[name].grad[r], p.grad, rtol=1e-10, atol=1e-12)


def test_float32_fast_forward_is_within_rounding_of_float64():
    models32 = _models(PAPER_INITS[:5], dtype=torch.float32)
    models64 = [copy.deepcopy(m).double() for m in models32]
    x = torch.randn(8, 3, 32, 32)
    out32 = StackedRuns(models32).forward(x)
    out64 = StackedRuns(models64).forward(x.double())
    scale = out64.abs().amax(dim=(1, 2), keepdim=True)
    assert ((out32.double() - out64).abs() / scale).max() < 1e-5


def test_wrong_input_shape_still_gets_the_models_error():
    runs = StackedRuns(_models(["orthogonal"], dtype=torch.float32))
    with pytest.raises(NndistError, match="3x32x32"):
        runs.forward(torch.randn(2, 3, 16, 16))


def test_stacked_adam_equals_plain_adam():
    """The fused Adam makes the same updates as the default one (float64, 3 steps)."""
    a, b = StackedRuns(_models(["kaiming_normal", "xavier_uniform"])), StackedRuns(_models(["kaiming_normal", "xavier_uniform"]))
    start = {k: v.detach().clone() for k, v in a.params.items()}
    opt_a = stacked_adam(a, lr=1e-3, weight_decay=1e-2)
    opt_b = torch.optim.Adam(b.params.values(), lr=1e-3, weight_decay=1e-2)
    torch.manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
        for runs, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            runs.losses(x, y)[0].sum().backward()
            opt.step()
    for name in a.params:
        torch.testing.assert_close(a.params[name], b.params[name], rtol=1e-12, atol=1e-15)
        assert not torch.equal(a.params[name], start[name]), name  # the steps moved every parameter
