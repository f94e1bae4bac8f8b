"""The differentiable budget: with binary gates it equals count_cost of the really cut model; with
soft gates it is smooth (torch gradients) and agrees between numpy and torch."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smof_onnx.passes.analysis.flops import count_cost
from smof_onnx.selection.select import cut_ratio, prepare
from tests import cases
from tests.test_selection_gates import cut_model, tiny_cnn

TINY = prepare(tiny_cnn(), None, multiple=1)


def _binary(problem, bits: np.ndarray) -> np.ndarray:
    return problem.space.effective(problem.space.binarize(bits.astype(float)))


def test_all_kept_is_the_counted_total():
    assert TINY.budget.flops(np.ones(TINY.space.size)) == pytest.approx(count_cost(TINY.model, TINY.shapes).flops)
    assert TINY.budget.ratio(np.ones(TINY.space.size)) == pytest.approx(1.0)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.booleans(), min_size=TINY.space.size, max_size=TINY.space.size))
def test_binary_budget_equals_count_of_the_cut_model(bits):
    h = _binary(TINY, np.asarray(bits))
    zeroed = TINY.space.apply(TINY.model, h)
    counted = count_cost(cut_model(zeroed, TINY.shapes), TINY.shapes).flops
    assert TINY.budget.flops(h) == pytest.approx(counted, rel=1e-12)


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2", "vgg"])
def test_binary_budget_equals_cut_count_on_zoo_models(name):
    problem = prepare(cases.load_zoo(name, "torchscript"), None, multiple=1)
    assert problem.space.channel and problem.space.kernel
    rng = np.random.default_rng(0)
    for keep in (0.8, 0.5):
        h = _binary(problem, rng.random(problem.space.size) < keep)
        assert problem.budget.ratio(h) < 1
        assert problem.budget.ratio(h) == pytest.approx(cut_ratio(problem, h), rel=1e-9)


def test_torch_and_numpy_agree_and_gradients_are_costs():
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(1).random(TINY.space.size)
    t = torch.tensor(g, dtype=torch.float64, requires_grad=True)
    value = TINY.budget.flops(t)
    assert float(value.detach()) == pytest.approx(TINY.budget.flops(g), rel=1e-12)
    value.backward()
    grad = t.grad.numpy()
    assert np.all(grad > 0)  # keeping more of anything costs FLOPs
    # an inner ring's cost includes the outer ring it takes with it
    inner = next(k.index for k in TINY.space.kernel if k.node == "conv3" and k.axis == 0 and k.level == 2)
    outer = next(k.index for k in TINY.space.kernel if k.node == "conv3" and k.axis == 0 and k.level == 1)
    ones = torch.ones(TINY.space.size, dtype=torch.float64, requires_grad=True)
    TINY.budget.flops(ones).backward()
    assert ones.grad[inner] > ones.grad[outer] > 0


def test_depthwise_conv_counts_channels_once():
    problem = prepare(cases.load_zoo("mobilenet_v2", "torchscript"), None, multiple=1)
    dw = [t for t in problem.budget.terms if t.depthwise]
    assert dw, "mobilenet_v2 has depthwise convs"
    h = np.ones(problem.space.size)
    gated = [t for t in dw if (t.out_idx >= 0).any()]
    term = gated[0]
    h[term.out_idx[term.out_idx >= 0][: len(term.out_idx) // 2]] = 0
    h = problem.space.effective(h)
    assert problem.budget.ratio(h) == pytest.approx(cut_ratio(problem, h), rel=1e-9)


def relu_only():
    """x[N,3,4,4] -> Relu -> y: no Conv / Gemm / MatMul, so no counted FLOPs."""
    import onnx
    import onnx.helper as oh

    f = onnx.TensorProto.FLOAT
    graph = oh.make_graph([oh.make_node("Relu", ["x"], ["y"], name="relu")], "relu",
                          [oh.make_tensor_value_info("x", f, ["N", 3, 4, 4])],
                          [oh.make_tensor_value_info("y", f, ["N", 3, 4, 4])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_a_model_without_flops_keeps_all_of_its_zero_flops():
    """0 / 0 is "everything kept" (ratio 1), never a ZeroDivisionError, for numpy and torch gates."""
    p = prepare(relu_only(), None, multiple=1)
    assert p.budget.total == 0 and p.space.size == 0
    assert p.budget.flops(np.ones(0)) == 0
    assert p.budget.ratio(np.ones(0)) == 1.0
    torch = pytest.importorskip("torch")
    r = p.budget.ratio(torch.ones(0, dtype=torch.float64))
    assert isinstance(r, torch.Tensor) and float(r) == 1.0
