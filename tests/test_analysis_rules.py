"""Specification of passes.analysis.rules: the table itself and each rule's coupling / zero transfer."""
from __future__ import annotations

import numpy as np
import pytest

from smof_onnx.passes.analysis import rules
from smof_onnx.passes.analysis.rulebase import CATEGORIES, Rule
from smof_onnx.passes.analysis.rules_elementwise import Map, _same
from tests.test_analysis_channels import Net, analyze


def test_table_is_well_formed_and_covers_the_design_ops():
    for op, rule in rules.RULES.items():
        assert isinstance(rule, Rule) and rule.category in CATEGORIES, op
    must = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Relu", "LeakyRelu", "PRelu", "Clip",
            "Tanh", "HardSwish", "Elu", "Selu", "Gelu", "Softplus", "Sigmoid", "HardSigmoid", "Exp", "Mul", "Add",
            "Sub", "Div", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "Resize",
            "Upsample", "Pad", "Concat", "Split", "Slice", "Identity", "Dropout", "Flatten", "Reshape",
            "Transpose", "Squeeze", "Unsqueeze", "Cast", "Softmax"}
    assert must <= rules.RULES.keys()
    assert not rules.NEVER & rules.RULES.keys()


def test_building_a_table_rejects_an_op_in_two_categories_and_malformed_entries():
    with pytest.raises(ValueError, match="two categories"):
        rules._build({"elementwise": {"Relu": Map(_same)}, "pooling": {"Relu": rules.RULES["MaxPool"]}})
    with pytest.raises(TypeError, match="not a Rule"):
        rules._build({"elementwise": {"Relu": object()}})
    with pytest.raises(ValueError, match="category"):
        rules._build({"producer": {"Relu": Map(_same)}})
    with pytest.raises(TypeError, match="unknown rule category"):
        rules._build({"nonsense": {}})


def one_op(op, *extra_inputs, cout=4, zero=(1,), shape=(8, 8), **attrs):
    """x -> conv (channel `zero` zeroed) -> op -> conv -> y; returns (analysis, op output, conv output)."""
    n = Net(opset=20)
    x = n.input(["N", 3, *shape])
    a = n.conv(x, 3, cout, zero_out=zero, name="c")
    t = n.op(op, [a, *[n.const(v) for v in extra_inputs]], **attrs)
    y = n.conv(t, cout, 2, k=1, pads=[0] * 4, name="h")
    return analyze(n.model(y)), t, a


@pytest.mark.parametrize("op,preserves", [("Relu", True), ("Tanh", True), ("HardSwish", True), ("Elu", True),
                                          ("Selu", True), ("Gelu", True), ("Softplus", False),
                                          ("Sigmoid", False), ("HardSigmoid", False), ("Exp", False)])
def test_activation_zero_transfer(op, preserves):
    an, t, a = one_op(op)
    assert an.tensor_zero(t)[1] == preserves
    # f(0) != 0 is still input-independent: the unpadded 1x1 reader folds it, so the slot goes either way
    assert an.slots[int(an.slots_of(t)[1])].removable
    assert int(an.slots_of(t)[1]) == int(an.slots_of(a)[1])


@pytest.mark.parametrize("op,f0", [("Softplus", np.log(2.0)), ("Sigmoid", 0.5), ("HardSigmoid", 0.5),
                                   ("Exp", 1.0), ("Relu", 0.0)])
def test_activation_of_a_zero_channel_is_its_constant(op, f0):
    an, t, _ = one_op(op)
    assert an.tensor_constant(t)[1] == pytest.approx(f0, rel=1e-6)
    assert np.isnan(an.tensor_constant(t)[[0, 2, 3]]).all()


@pytest.mark.parametrize("lo,hi,preserves", [(0.0, 6.0, True), (-1.0, 1.0, True), (0.5, 6.0, False),
                                             (-6.0, -1.0, False)])
def test_clip_zero_transfer_needs_zero_in_range(lo, hi, preserves):
    an, t, _ = one_op("Clip", np.float32(lo), np.float32(hi))
    assert an.tensor_zero(t)[1] == preserves


def test_clip_bounds_as_attributes_before_opset_11():
    n = Net(opset=10)
    x = n.input(["N", 3, 8, 8])
    t = n.op("Clip", [n.conv(x, 3, 4, zero_out=(2,), name="c")], min=0.0, max=6.0)
    an = analyze(n.model(n.conv(t, 4, 2, name="h")))
    assert an.tensor_zero(t).tolist() == [False, False, True, False]


def test_div_by_constant_keeps_zero_but_division_by_zero_does_not():
    an, t, _ = one_op("Div", np.float32(2.0))
    assert an.tensor_zero(t)[1]
    an, t, _ = one_op("Div", np.array([1, 0, 1, 1], np.float32).reshape(1, 4, 1, 1))
    assert not an.tensor_zero(t)[1]


def test_mul_by_zero_constant_channel_is_zero_and_add_of_nonzero_constant_is_not():
    an, t, _ = one_op("Mul", np.array([1, 1, 0, 1], np.float32).reshape(1, 4, 1, 1))
    assert an.tensor_zero(t).tolist() == [False, True, True, False]
    an, t, _ = one_op("Add", np.array([0, 1, 0, 0], np.float32).reshape(1, 4, 1, 1))
    assert an.tensor_zero(t).tolist() == [False, False, False, False]


def test_channel_softmax_is_frozen_but_spatial_softmax_is_not():
    an, t, a = one_op("Softmax", axis=1)
    assert not an.slots[int(an.slots_of(a)[1])].removable
    assert any("Softmax" in f.where and "channel axis" in f.reason for f in an.frozen)
    an, t, a = one_op("Softmax", axis=3)
    assert int(an.slots_of(a)[1]) == int(an.slots_of(t)[1]) and not an.tensor_zero(t)[1]


def test_pad_on_the_channel_axis_is_frozen():
    an, t, a = one_op("Pad", np.array([0, 1, 0, 0, 0, 0, 0, 0], np.int64))
    assert any("pads the channel axis" in f.reason for f in an.frozen)
    assert not an.slots[int(an.slots_of(a)[1])].removable


def test_reduce_mean_over_space_keeps_channels_and_over_channels_freezes():
    an, t, a = one_op("ReduceMean", np.array([2, 3], np.int64), keepdims=1)   # opset 18+: axes as input
    assert an.tensor_zero(t)[1] and an.slots[int(an.slots_of(t)[1])].removable
    an, t, a = one_op("ReduceMean", np.array([1], np.int64), keepdims=1)
    assert any("channel axis" in f.reason for f in an.frozen)


def test_concat_offsets_and_split_ranges_share_slots():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a, b = n.conv(x, 3, 2, name="a"), n.conv(x, 3, 3, name="b")
    c = n.op("Concat", [a, b], axis=1)
    p, q = n.op("Split", [c, n.const(np.array([4, 1], np.int64))], n_out=2, axis=1)
    an = analyze(n.model(n.op("Add", [n.conv(p, 4, 2, name="hp"), n.conv(q, 1, 2, name="hq")])))
    assert an.slots_of(c).tolist() == an.slots_of(a).tolist() + an.slots_of(b).tolist()
    assert an.slots_of(p).tolist() == an.slots_of(c)[:4].tolist()
    assert an.slots_of(q).tolist() == an.slots_of(c)[4:].tolist()


def test_depthwise_multiplier_groups_one_input_with_its_outputs():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.conv(x, 3, 3, name="a")
    d = n.conv(a, 3, 6, group=3, name="dw")
    an = analyze(n.model(n.conv(d, 6, 2, name="h")))
    sa, sd = an.slots_of(a), an.slots_of(d)
    assert [int(sa[g]) for g in range(3)] == [int(sd[2 * g]) for g in range(3)] == [int(sd[2 * g + 1]) for g in
                                                                                   range(3)]
    assert len(set(sa.tolist())) == 3


def test_flatten_maps_each_channel_to_its_block_and_mtcnn_transpose_interleaves():
    n = Net()
    x = n.input([1, 3, 3, 2])
    a = n.conv(x, 3, 4, name="a")
    f = n.op("Flatten", [a])
    t = n.op("Flatten", [n.op("Transpose", [a], perm=[0, 3, 2, 1])])
    an = analyze(n.model(n.gemm(f, 24, 2, name="g1"), n.gemm(t, 24, 2, name="g2")))
    sa = an.slots_of(a)
    assert an.slots_of(f).tolist() == np.repeat(sa, 6).tolist()
    assert an.slots_of(t).tolist() == np.tile(sa, 6).tolist()


def test_channel_shuffle_reshape_is_frozen():
    n = Net()
    x = n.input([1, 3, 4, 4])
    a = n.conv(x, 3, 4, name="a")
    r = n.op("Reshape", [a, n.const(np.array([1, 2, 2, 4, 4], np.int64))])
    s = n.op("Reshape", [n.op("Transpose", [r], perm=[0, 2, 1, 3, 4]), n.const(np.array([1, 4, 4, 4], np.int64))])
    an = analyze(n.model(n.conv(s, 4, 2, name="h")))
    assert any("mixes the channel axis" in f.reason for f in an.frozen)
    assert not any(sl.removable for sl in an.slots if (a, 0) in sl.atoms)


def test_layout_with_unknown_spatial_size_is_frozen_until_shapes_are_given():
    n = Net()
    x = n.input(["N", 3, "H", "W"])
    a = n.conv(x, 3, 4, zero_out=(1,), name="a")
    f = n.op("Flatten", [n.op("MaxPool", [a], kernel_shape=[8, 8])])   # [N, 4, H-7, W-7]: unknown size
    model = n.model(n.gemm(f, 4, 2, name="g"))
    an = analyze(model)
    assert any("static" in fr.reason for fr in an.frozen)
    assert an.slots[int(an.slots_of(a)[1])].zero and not an.slots[int(an.slots_of(a)[1])].removable
    an = analyze(model, {"x": [1, 3, 8, 8]})
    assert an.slots[int(an.slots_of(a)[1])].removable


@pytest.mark.parametrize("layout", ["flatten", "reshape_fixed", "reshape_minus1", "reshape_batch_minus1",
                                    "transpose_flatten", "squeeze"])
def test_a_one_channel_tensor_keeps_its_feature_axis_through_layouts(layout):
    """One channel makes the index simulation constant; the axis is found by probing with two."""
    n = Net()
    x = n.input([1, 3, 2, 3])
    a = n.op("Relu", [n.conv(x, 3, 1, name="a")])                   # [1, 1, 2, 3]
    if layout == "flatten":
        f = n.op("Flatten", [a])
    elif layout == "reshape_fixed":                                  # a cut left [1, 6] (was [1, C*6])
        f = n.op("Reshape", [a, n.const(np.array([1, 6], np.int64))])
    elif layout == "reshape_minus1":
        f = n.op("Reshape", [a, n.const(np.array([1, -1], np.int64))])
    elif layout == "reshape_batch_minus1":                           # [-1, 6] fits a batch axis of 2 too
        f = n.op("Reshape", [a, n.const(np.array([-1, 6], np.int64))])
    elif layout == "transpose_flatten":                              # MTCNN: channel axis moves last
        f = n.op("Flatten", [n.op("Transpose", [a], perm=[0, 3, 2, 1])])
    else:
        a = n.op("GlobalAveragePool", [a])                            # [1, 1, 1, 1]
        f = n.op("Squeeze", [a, n.const(np.array([2, 3], np.int64))])  # [1, 1]
    k = 1 if layout == "squeeze" else 6
    an = analyze(n.model(n.gemm(f, k, 2, name="g")))
    assert an.frozen and all(fr.where.startswith("graph") for fr in an.frozen), an.frozen
    assert an.spaces[f].axis == 1 and an.spaces[f].size == k
    assert set(an.slots_of(f).tolist()) == set(an.slots_of(a).tolist())


def test_a_one_channel_axis_that_a_squeeze_without_axes_drops_is_frozen_with_that_reason():
    n = Net()
    x = n.input([1, 3, 1, 1])
    a = n.op("Relu", [n.conv(x, 3, 1, k=1, pads=[0] * 4, name="a")])  # [1, 1, 1, 1]
    s = n.op("Squeeze", [a])                                          # [] : the channel axis is gone
    an = analyze(n.model(n.op("Mul", [s, n.const(np.float32(2.0))])))
    assert any("one channel left" in fr.reason for fr in an.frozen), an.frozen
