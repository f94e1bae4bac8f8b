"""passes.fold_channel_affine: a per-channel (or scalar) constant Mul / Div / Add / Sub right after
a Conv or ConvTranspose (its only reader) folds into the weights and bias, exactly; the op's
output name is kept; forms that are not affine per channel are left alone with a reason."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from smof_onnx.passes.fold_channel_affine import fold_channel_affine
from smof_onnx.passes.graph import to_graph, to_model
from tests.helpers import assert_equivalent, op_counts

F32 = TensorProto.FLOAT


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _model(nodes, inits, x_shape, outputs=("Y",), opset=17, out_rank=None):
    unknown = [None] * (out_rank or len(x_shape))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", F32, x_shape)],
                              [helper.make_tensor_value_info(n, F32, unknown) for n in outputs], inits)
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def _conv(op="Conv", nd=2, cin=4, cout=6, group=1, k=3, bias=True, seed=0, stride=1):
    """The conv node (input X, output c) and its initializers."""
    rng = np.random.default_rng(seed)
    ks = [k] * nd
    wshape = [cout, cin // group, *ks] if op == "Conv" else [cin, cout // group, *ks]
    inits = [_init("W", rng.standard_normal(wshape))]
    if bias:
        inits.append(_init("B", rng.standard_normal(cout)))
    node = helper.make_node(op, ["X", "W", "B"] if bias else ["X", "W"], ["c"], name="conv", group=group,
                            kernel_shape=ks, strides=[stride] * nd, pads=[k // 2] * (2 * nd))
    return node, inits


def _affine(op, shape, conv_first=True, seed=1, name="k", out="Y", src="c"):
    rng = np.random.default_rng(seed)
    value = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    ins = [src, name] if conv_first else [name, src]
    return helper.make_node(op, ins, [out], name=f"{op.lower()}_{name}"), _init(name, value)


def _run(model):
    result = fold_channel_affine(to_graph(model))
    return result, to_model(result.graph)


def _shapes(nd, cout):
    """Every per-channel / scalar constant shape against an N,C,spatial^nd output."""
    r = nd + 2
    return [(), (1,), (cout,) + (1,) * nd, (1, cout) + (1,) * nd, (1,) * r, (1,) * (r - 1)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_op=st.sampled_from(["Conv", "ConvTranspose"]), nd=st.integers(1, 3), group=st.integers(1, 3),
       cin_per=st.integers(1, 2), cout_per=st.integers(1, 3), k=st.integers(1, 3), bias=st.booleans(),
       op=st.sampled_from(["Mul", "Div", "Add", "Sub"]), conv_first=st.booleans(), shape_i=st.integers(0, 5),
       stride=st.integers(1, 2), opset=st.sampled_from([11, 13, 14, 17, 21]), seed=st.integers(0, 2**16))
def test_property_fold_is_exact(conv_op, nd, group, cin_per, cout_per, k, bias, op, conv_first, shape_i,
                                stride, opset, seed):
    if op == "Div":
        conv_first = True  # c / conv(x) is not affine; tested below as a refusal
    cin, cout = group * cin_per, group * cout_per
    conv, inits = _conv(conv_op, nd, cin, cout, group, k, bias, seed, stride)
    node, const = _affine(op, _shapes(nd, cout)[shape_i], conv_first, seed + 1)
    before = _model([conv, node], inits + [const], [2, cin] + [5] * nd, opset=opset)
    result, after = _run(before)
    assert result.changed and op_counts(after) == {conv_op: 1}
    assert result.stats["folded"] == [{"node": node.name, "op": op, "into": "conv"}]
    assert after.graph.node[0].output[0] == "Y"
    assert len(after.graph.node[0].input) == (3 if bias or op in ("Add", "Sub") else 2)
    assert_equivalent(before, after)


def test_paddle_learnable_affine_mul_then_add_folds_as_a_chain():
    """PP-OCRv4: conv -> Mul([1]) -> Add([1]) (PP-LCNetV3's learnable affine block)."""
    conv, inits = _conv(bias=True)
    mul, s = _affine("Mul", (1,), out="m", name="s")
    add, b = _affine("Add", (1,), src="m", name="b", seed=2)
    before = _model([add, mul, conv], inits + [s, b], [1, 4, 6, 6])  # unsorted on purpose
    result, after = _run(before)
    assert op_counts(after) == {"Conv": 1}
    assert [f["op"] for f in result.stats["folded"]] == ["Mul", "Add"]
    assert_equivalent(before, after)


def test_c_minus_conv_negates_the_weights():
    conv, inits = _conv(bias=False)
    node, c = _affine("Sub", (1, 6, 1, 1), conv_first=False)
    before = _model([conv, node], inits + [c], [1, 4, 5, 5])
    w = numpy_helper.to_array(inits[0])
    _, after = _run(before)
    folded = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    np.testing.assert_array_equal(folded[after.graph.node[0].input[1]], -w)
    np.testing.assert_array_equal(folded[after.graph.node[0].input[2]], numpy_helper.to_array(c).reshape(-1))
    assert_equivalent(before, after)


def _refused(model, kept=False, run_it=True):
    result, after = _run(model)
    assert not result.changed and op_counts(after) == op_counts(model)
    entries = result.stats["kept" if kept else "refused"]
    assert len(entries) == 1
    if run_it:
        assert_equivalent(model, after)
    return entries[0]["reason"]


def test_constant_divided_by_conv_is_refused():
    conv, inits = _conv()
    node, c = _affine("Div", (1,), conv_first=False)
    assert "not affine" in _refused(_model([conv, node], inits + [c], [1, 4, 5, 5]))


def test_division_by_zero_channel_is_refused():
    conv, inits = _conv()
    node = helper.make_node("Div", ["c", "k"], ["Y"], name="div")
    c = _init("k", np.array([1, 2, 0, 1, 1, 1]).reshape(1, 6, 1, 1))
    # not run: x / 0 is inf in both models and inf - inf would compare as nan
    assert "zero" in _refused(_model([conv, node], inits + [c], [1, 4, 5, 5]), run_it=False)


@pytest.mark.parametrize("shape", [(6,), (1, 1, 1, 6), (1, 6, 6, 1), (2, 1, 1, 1), (1, 1, 1, 1, 1)])
def test_constant_varying_along_another_axis_or_rank_is_refused(shape):
    """[6] against [N,6,6,6] varies along W, not C; higher rank changes the output's rank."""
    conv, inits = _conv()
    node, c = _affine("Mul", shape)
    model = _model([conv, node], inits + [c], [1, 4, 6, 6], out_rank=max(4, len(shape)))
    assert "constant of shape" in _refused(model)


def test_conv_output_with_other_readers_is_kept():
    """Hard-swish reads the conv output twice (x + 3 and x * ...): the Add cannot absorb it."""
    conv, inits = _conv()
    add, c = _affine("Add", ())
    mul = helper.make_node("Mul", ["c", "Y"], ["Z"], name="mul")
    model = _model([conv, add, mul], inits + [c], [1, 4, 5, 5], outputs=("Z",))
    assert "2 readers" in _refused(model, kept=True)


def test_runtime_operand_is_not_a_candidate():
    conv, inits = _conv()
    mul = helper.make_node("Mul", ["c", "X"], ["Y"], name="mul")
    result, after = _run(_model([conv, mul], inits, [1, 6, 5, 5]))
    assert not result.changed and result.stats["refused"] == [] and result.stats["kept"] == []


def test_shared_weight_is_cloned_before_editing():
    conv1, inits = _conv(cin=6, cout=6)
    conv2 = helper.make_node("Conv", ["Y", "W", "B"], ["Z"], name="conv2", pads=[1, 1, 1, 1])
    node, c = _affine("Mul", (1, 6, 1, 1))
    before = _model([conv1, node, conv2], inits + [c], [1, 6, 5, 5], outputs=("Z",))
    result, after = _run(before)
    assert op_counts(after) == {"Conv": 2}
    weights = {n.name: n.input[1] for n in after.graph.node}
    assert weights["conv2"] == "W" and weights["conv"] != "W"
    assert_equivalent(before, after)
