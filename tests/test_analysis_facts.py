"""Specification of passes.analysis.facts: zero forward, unused backward, the producer hypothesis."""
from __future__ import annotations

import numpy as np

from smof_onnx.passes.analysis.spaces import Sink
from tests.test_analysis_channels import Net, analyze


def test_sink_zero_outputs_need_zero_bias_and_only_zero_inputs_read():
    dep = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], bool)
    s = Sink("n", "Conv", "x", "y", dep, 1, np.array([True, True, False]))
    assert s.zero_outputs(np.array([True, False, False])).tolist() == [True, False, False]
    assert s.zero_outputs(None).tolist() == [False, False, False]
    assert s.needed_inputs(np.array([False, True, True])).tolist() == [False, True, True]


def test_grouped_sink_reads_within_its_group_only():
    dep = np.ones((4, 1), bool)                          # depthwise, multiplier 2, 2 groups
    s = Sink("n", "Conv", "x", "y", dep, 2, np.ones(4, bool))
    assert s.zero_outputs(np.array([True, False])).tolist() == [True, True, False, False]
    assert s.needed_inputs(np.array([False, False, True, False])).tolist() == [False, True]


def test_zero_flows_forward_through_conv_when_all_read_inputs_are_zero():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.op("Relu", [n.conv(x, 3, 3, zero_out=(0, 1), name="c1")])
    w = n.weight((2, 3, 3, 3))
    w[0, 2] = 0                                          # filter 0 reads only channels 0, 1 (both zero)
    b = n.op("Conv", [a, n.const(w)], name="c2", pads=[1] * 4)
    an = analyze(n.model(n.conv(n.op("Relu", [b]), 2, 2, name="h")))
    assert an.tensor_zero(b).tolist() == [True, False]


def test_mul_by_a_zero_channel_makes_the_other_operand_unused():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.conv(x, 3, 4, zero_out=(2,), name="a")
    g = n.op("Sigmoid", [n.conv(x, 3, 4, name="g")])
    m = n.op("Mul", [a, g])
    an = analyze(n.model(n.conv(m, 4, 2, name="h")))
    assert an.tensor_zero(m)[2] and not an.tensor_zero(g)[2]
    assert an.tensor_unused(g).tolist() == [False, False, True, False]


def test_add_needs_both_operands_zero_and_keeps_both_needed_otherwise():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a, b = n.conv(x, 3, 3, zero_out=(0, 1), name="a"), n.conv(x, 3, 3, zero_out=(1,), name="b")
    s = n.op("Add", [a, b])
    an = analyze(n.model(n.conv(s, 3, 2, name="h")))
    assert an.tensor_zero(s).tolist() == [False, True, False]
    # a[0] is zero but s[0] = b[0] is live: a[0] stays needed; channel 1 is zero everywhere, so nobody needs it
    assert an.tensor_unused(a).tolist() == [False, True, False]
    assert not an.slots[int(an.slots_of(a)[0])].removable and an.slots[int(an.slots_of(a)[1])].removable


def test_unused_cascades_back_through_filters_nobody_reads():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.op("Relu", [n.conv(x, 3, 3, name="a")])
    w = n.weight((2, 3, 3, 3))
    w[:, 1] = 0
    w[1, 1] = 1.0                                        # channel 1 read by filter 1 only
    b = n.op("Relu", [n.op("Conv", [a, n.const(w)], name="b", pads=[1] * 4)])
    an = analyze(n.model(n.conv(b, 2, 2, zero_in=(1,), name="h")))   # filter 1's output is never read
    assert an.tensor_unused(b).tolist() == [False, True]
    assert an.tensor_unused(a).tolist() == [False, True, False]


def test_hypothesis_never_borrows_another_slots_zeroing():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.op("Relu", [n.conv(x, 3, 2, name="a")])
    b = n.op("Sigmoid", [n.conv(a, 2, 2, name="b")])     # b's slot: sigmoid(0) = 0.5 is read by h
    an = analyze(n.model(n.conv(b, 2, 2, name="h")))
    assert all(an.slots[int(s)].zero_if_producers_zeroed for s in an.slots_of(a))
    assert not any(an.slots[int(s)].zero_if_producers_zeroed for s in an.slots_of(b))
    assert not any(sl.removable for sl in an.slots)


def runtime_flatten_head(head_zero: bool):
    """x -> c1 -> u -> a -> t -> Reshape(t, runtime target from Shape(t)) -> MatMul(W) + b -> y.

    The Reshape (runtime target) and Shape have no model: t is frozen; the reshaped tensor is
    not tracked, so only node liveness can tell whether t, and u behind it, are needed."""
    import onnx
    n = Net()
    x = n.input([1, 3, 4, 4])
    u = n.op("Relu", [n.conv(x, 3, 6, name="c1")])
    t = n.op("Relu", [n.conv(u, 6, 4, name="a")])
    s = n.op("Cast", [n.op("Shape", [t], name="shape")], to=onnx.TensorProto.INT32)
    s = n.op("Slice", [s, n.const(np.array([0], np.int32)), n.const(np.array([1], np.int32))])
    target = n.op("Concat", [n.op("Cast", [s], to=onnx.TensorProto.INT64), n.const(np.array([-1], np.int64))],
                  axis=0)
    r = n.op("Reshape", [t, target], name="flatten")
    w = n.weight((64, 5)) * (0 if head_zero else 1)
    y = n.op("Add", [n.op("MatMul", [r, n.const(w)], name="head"), n.const(n.weight((5,)))])
    return n.model(y, shapes={y: [1, 5]}), u, t


def test_unused_flows_back_through_refused_nodes_none_of_whose_outputs_is_needed():
    model, u, t = runtime_flatten_head(head_zero=True)
    an = analyze(model, {"x": [1, 3, 4, 4]})
    assert {f.where for f in an.frozen} >= {"shape (Shape)", "flatten (Reshape)"}
    assert an.tensor_unused(t).all() and an.tensor_unused(u).all()
    assert not any(an.slots[int(s)].removable for s in an.slots_of(t))      # frozen stays frozen
    assert all(an.slots[int(s)].removable for s in an.slots_of(u))


def test_a_live_refused_node_needs_everything_it_reads():
    model, u, t = runtime_flatten_head(head_zero=False)
    an = analyze(model, {"x": [1, 3, 4, 4]})
    assert not an.tensor_unused(t).any() and not an.tensor_unused(u).any()
    assert not any(sl.removable for sl in an.slots)
