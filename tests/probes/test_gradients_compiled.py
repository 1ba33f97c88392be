"""The compiled correlation pass (numba, :mod:`nndist.probes.gradients.compiled`) against its twins,
in float64: the torch path of the same kernel, the literal twin (every ``LG^{c1->c2}`` by autograd)
and each feature's defining sum written out as loops over the grid."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gradients_literal import SAME_PADDING_COPY, grad_at_output, literal_local_gradients, rel_err
from torch import Tensor, nn

from nndist.probes.gradients import compiled, convnd

pytestmark = [
    pytest.mark.filterwarnings(SAME_PADDING_COPY),
    pytest.mark.skipif(not compiled.AVAILABLE, reason="numba is not installed"),
]

TOL = 1e-10

# (module class, keyword arguments, input shape); batch 2 takes the Gamma route, batch 96 the
# feature route (see _sq_norms_compiled), so each geometry runs through both
GEOMETRIES = [
    (nn.Conv2d, dict(kernel_size=3, padding=1), (7, 6)),
    (nn.Conv2d, dict(kernel_size=3, stride=2, padding=1), (9, 8)),
    (nn.Conv2d, dict(kernel_size=3, padding=2, dilation=2), (8, 7)),
    (nn.Conv2d, dict(kernel_size=(2, 4), padding="same"), (6, 7)),  # asymmetric 'same'
    (nn.Conv2d, dict(kernel_size=5, padding="same", dilation=2), (9, 9)),
    (nn.Conv2d, dict(kernel_size=1), (5, 4)),
    (nn.Conv2d, dict(kernel_size=5, stride=1, padding=2), (6, 11)),
    (nn.Conv2d, dict(kernel_size=7, stride=2, padding=3), (11, 9)),
    (nn.Conv2d, dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)), (7, 5)),
    (nn.Conv2d, dict(kernel_size=4, stride=3, padding=2, dilation=2), (10, 9)),
    (nn.Conv2d, dict(kernel_size=(1, 3), stride=(1, 2), padding="valid"), (4, 9)),
    (nn.Conv2d, dict(kernel_size=3, padding=0), (3, 3)),  # a 1x1 output
    (nn.Conv1d, dict(kernel_size=5, stride=2, padding=2, dilation=2), (13,)),
    (nn.Conv1d, dict(kernel_size=4, padding="same"), (9,)),
    (nn.Conv3d, dict(kernel_size=3, padding=1), (4, 5, 3)),
    (nn.Conv3d, dict(kernel_size=(3, 2, 3), stride=(2, 1, 2), padding=(1, 0, 2)), (6, 5, 5)),
    (nn.Conv3d, dict(kernel_size=(2, 3, 1), padding="same", dilation=(2, 1, 1)), (5, 5, 3)),
]


def test_both_routes_are_taken() -> None:
    cp = convnd._compiled((7, 6), (7, 6), (3, 3), (1, 1), (1, 1), (1, 1))
    assert not cp.folds_weights(2) and cp.folds_weights(96)


def geometry_id(case: tuple) -> str:
    cls, kw, size = case
    return f"{cls.__name__}[{','.join(f'{k}={v}' for k, v in kw.items())}]{size}"


def make(case: tuple, c_in: int, c_out: int, groups: int = 1) -> nn.Module:
    cls, kw, _ = case
    torch.manual_seed(0)
    return cls(c_in, c_out, groups=groups, **kw).double()


def both_paths(module: nn.Module, x: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
    kw = dict(
        stride=tuple(module.stride), padding=convnd.leading_padding(module), dilation=tuple(module.dilation)
    )
    w = module.weight.detach()
    fast = convnd.conv_local_gradient_sq_norms(w, G, tuple(x.shape[2:]), compiled=True, **kw)
    slow = convnd.conv_local_gradient_sq_norms(w, G, tuple(x.shape[2:]), compiled=False, **kw)
    return fast, slow


@pytest.mark.parametrize("batch", [1, 2, 96])
@pytest.mark.parametrize("case", GEOMETRIES, ids=geometry_id)
def test_compiled_equals_torch_path(case: tuple, batch: int) -> None:
    module = make(case, 3, 4)
    x = torch.randn(batch, 3, *case[2], dtype=torch.float64)
    G, _ = grad_at_output(module, x)
    fast, slow = both_paths(module, x, G)
    assert fast.shape == slow.shape
    assert rel_err(fast, slow) <= 1e-12


@pytest.mark.parametrize("case", GEOMETRIES, ids=geometry_id)
def test_compiled_against_literal(case: tuple) -> None:
    module = make(case, 4, 6, groups=2)
    x = torch.randn(2, 4, *case[2], dtype=torch.float64)
    G, _ = grad_at_output(module, x)
    fast, _ = both_paths(module, x, G)  # (C_out, B, C_in/g)
    lg = literal_local_gradients(module, x, G)  # (B, C_out, C_in, *positions)
    sq = lg.flatten(3).pow(2).sum(-1)  # (B, C_out, C_in)
    cout_g, cin_g = 3, 2
    for c1 in range(6):
        group = c1 // cout_g
        want = sq[:, c1, group * cin_g : (group + 1) * cin_g]  # (B, C_in/g)
        assert rel_err(fast[c1], want) <= TOL


def _written_out(g: Tensor, boxes) -> Tensor:  # type: ignore[no-untyped-def]
    """Each feature by its definition: sum over the box of G[o] G[o + delta], as loops over the grid."""
    B, C = g.shape[:2]
    size = tuple(g.shape[2:])
    out = torch.zeros(C, B, len(boxes), dtype=g.dtype)
    for f, (fixed, delta) in enumerate(boxes):
        for o in itertools.product(*(range(n) for n in size)):
            if any(h >= 0 and o[a] != h for a, h in enumerate(fixed)):
                continue
            q = tuple(o[a] + delta[a] for a in range(len(size)))
            if all(0 <= q[a] < size[a] for a in range(len(size))):
                out[:, :, f] += (g[(slice(None), slice(None), *o)] * g[(slice(None), slice(None), *q)]).T
    return out


def _compiled_plan(module: nn.Module, x: Tensor, G: Tensor):  # type: ignore[no-untyped-def]
    """The compiled programs of ``module``'s geometry for input ``x`` and output gradient ``G``."""
    return convnd._compiled(
        tuple(x.shape[2:]), tuple(G.shape[2:]), tuple(module.kernel_size), tuple(module.stride),
        tuple(module.dilation), convnd.leading_padding(module),
    )


@pytest.mark.parametrize("case", GEOMETRIES[:4] + GEOMETRIES[12:16], ids=geometry_id)
def test_features_are_their_defining_sums(case: tuple) -> None:
    """The flat padded buffer (rows merged, offsets, lanes) gives each box's sum, with no torch in between."""
    module = make(case, 2, 3)
    x = torch.randn(2, 2, *case[2], dtype=torch.float64)
    G, _ = grad_at_output(module, x)
    cp = _compiled_plan(module, x, G)
    used = (cp.plan.mix != 0).any(1).nonzero()[:, 0].tolist()
    want = _written_out(G, [cp.plan.boxes[i] for i in used])
    got = compiled.correlate(G, cp.program, cp.features)
    assert rel_err(got, want) <= 1e-12
    # the Gamma route applies the mix in the pass
    gamma = compiled.correlate(G, cp.program, cp.gamma)
    assert rel_err(gamma, want @ cp.mix) <= 1e-12


def test_float32_and_odd_layouts() -> None:
    """float32 accumulates in float32 (as the convolution it replaces); a channels-last or sliced G is
    read as given; results do not depend on the thread count."""
    import numba

    torch.manual_seed(3)
    case = GEOMETRIES[0]
    module = make(case, 5, 7)
    x = torch.randn(64, 5, 12, 10, dtype=torch.float64)
    G, _ = grad_at_output(module, x)
    _, exact = both_paths(module, x, G)
    fast32, _ = both_paths(module.float(), x.float(), G.float())
    assert fast32.dtype == torch.float32 and rel_err(fast32.double(), exact) <= 1e-5
    last = G.to(memory_format=torch.channels_last)
    assert rel_err(both_paths(module.double(), x, last)[0], exact) <= 1e-12
    cp = convnd._compiled((12, 10), (12, 10), (3, 3), (1, 1), (1, 1), (1, 1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the pass follows torch's thread count
        one = compiled.correlate(G, cp.program, cp.features)
        assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, compiled.correlate(G, cp.program, cp.features))


def test_nonfinite_gradient_gives_nonfinite_norms() -> None:
    module = make(GEOMETRIES[0], 2, 3)
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64)
    G, _ = grad_at_output(module, x)
    G[1, 2, 3, 3] = float("nan")
    fast, slow = both_paths(module, x, G)
    assert torch.equal(fast.isnan(), slow.isnan()) and fast[:, 1].isnan().any()
    assert rel_err(fast[:, 0], slow[:, 0]) <= 1e-12


@settings(max_examples=25, deadline=None)
@given(
    n=st.sampled_from([1, 2, 3]),
    k=st.integers(1, 5),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 3),
    pad=st.integers(0, 3),
    size=st.integers(3, 9),
    batch=st.sampled_from([1, 3, 128]),
)
def test_compiled_property(n: int, k: int, stride: int, dilation: int, pad: int, size: int, batch: int) -> None:
    if n == 3:  # keep the grid small
        size, batch = min(size, 5), min(batch, 3)
    if dilation * (k - 1) + 1 > size + 2 * pad:
        return
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n]
    torch.manual_seed(4)
    module = cls(2, 3, k, stride=stride, padding=pad, dilation=dilation).double()
    x = torch.randn(batch, 2, *([size] * n), dtype=torch.float64)
    G, _ = grad_at_output(module, x)
    fast, slow = both_paths(module, x, G)
    assert rel_err(fast, slow) <= 1e-12


@pytest.mark.parametrize("case", [GEOMETRIES[0], GEOMETRIES[3], GEOMETRIES[7], GEOMETRIES[14]], ids=geometry_id)
def test_folded_weights_against_torch(case: tuple) -> None:
    """The tap products and the weights folded into the mix, compiled, against the torch einsum."""
    module = make(case, 6, 5, groups=1)
    x = torch.randn(1, 6, *case[2], dtype=torch.float64)
    G, _ = grad_at_output(module, x)
    cp = _compiled_plan(module, x, G)
    w = module.weight.detach().reshape(5, 6, -1)
    ww = convnd._tap_products(w, cp.plan)  # (C_out, C_in, T)
    assert rel_err(compiled.fold_taps(w, cp.taps), ww.transpose(1, 2)) <= 1e-14
    assert rel_err(compiled.fold_taps(w, cp.mixed_taps), cp.mix @ ww.transpose(1, 2)) <= 1e-13


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_paper_statistics_against_torch(groups: int) -> None:
    from nndist.probes.gradients.reduce import grouped_result

    torch.manual_seed(5)
    q = torch.rand(6, 7, 4, dtype=torch.float64)  # (C_out, B, C_in/g)
    q[0, 0, 0] = -1e-18  # a vanishing form that rounding made negative
    want = grouped_result(q.clamp_min(0).sqrt(), groups)
    em, ab, ns = compiled.paper_statistics(q.clone(), groups)
    for got, ref in ((em, want.emission), (ab, want.absorption), (ns, want.norm_sum)):
        assert got.shape == ref.shape and rel_err(got, ref) <= 1e-14
    q[2, 3, 1] = float("nan")
    em, ab, ns = compiled.paper_statistics(q, groups)
    assert em[3, 2].isnan() and ns[2].isnan().any() and not em[0].isnan().any()
