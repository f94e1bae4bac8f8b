"""Specification of passes.analysis.shapes: inference, the ONNX Runtime probe, and honest reasons."""
from __future__ import annotations

import numpy as np
import onnx

from smof_onnx.passes.analysis.channels import _topo
from smof_onnx.passes.analysis.shapes import _dims, shape_determined, tensor_shapes
from smof_onnx.passes.graph import infer_graph_shapes, to_graph
from tests.test_analysis_channels import Net, analyze


def paddle_flatten(batch="N"):
    """Paddle's flatten: Reshape(a, Concat(Cast(Slice(Cast(Shape(a), int32))), [-1])), then a Gemm."""
    n = Net()
    x = n.input([batch, 3, 4, 4])
    a = n.op("Relu", [n.conv(x, 3, 4, zero_out=(1,), name="a")])
    s = n.op("Cast", [n.op("Shape", [a])], to=onnx.TensorProto.INT32)
    s = n.op("Slice", [s, n.const(np.array([0], np.int32)), n.const(np.array([1], np.int32))])
    t = n.op("Concat", [n.op("Cast", [s], to=onnx.TensorProto.INT64), n.const(np.array([-1], np.int64))], axis=0)
    r = n.op("Reshape", [a, t], name="flatten")
    return n.model(n.gemm(r, 64, 2, name="g")), a, r


def test_a_shape_inference_cannot_tell_is_read_from_one_runtime_run():
    model, _, r = paddle_flatten()
    g = to_graph(model)
    assert _dims(infer_graph_shapes(g, {"x": [1, 3, 4, 4]})).get(r) is None   # the case the probe is for
    shapes, unknown = tensor_shapes(g, _topo(g), {"x": [1, 3, 4, 4]})
    assert shapes[r] == (1, 64) and unknown == {}


def test_without_static_input_shapes_the_reason_asks_for_them():
    model, _, r = paddle_flatten()
    g = to_graph(model)
    shapes, unknown = tensor_shapes(g, _topo(g), None)
    assert "give --input-shape" in unknown[r]


def test_a_value_dependent_shape_is_never_probed_and_says_so():
    n = Net()
    x = n.input([1, 3, 4, 4])
    a = n.op("Relu", [n.conv(x, 3, 4, name="a")])
    nz = n.op("NonZero", [a])                                     # [4, count]: count depends on values
    s = n.op("Shape", [nz])
    r = n.op("Reshape", [a, n.op("Concat", [n.const(np.array([1, -1], np.int64)), s], axis=0)])
    y = n.op("ReduceSum", [r], keepdims=0)
    g = to_graph(n.model(y, shapes={y: []}))
    det = shape_determined(g, _topo(g))
    assert a in det and nz not in det and r not in det
    shapes, unknown = tensor_shapes(g, _topo(g), {"x": [1, 3, 4, 4]})
    assert "depends on input values" in unknown[r]
    assert a not in unknown


def test_shape_valued_inputs_keep_a_reshape_shape_determined():
    model, a, r = paddle_flatten(batch=1)
    g = to_graph(model)
    assert {a, r} <= shape_determined(g, _topo(g))


def test_the_probe_lets_the_layout_rules_track_a_paddle_flatten_until_its_runtime_target():
    """The Reshape's target is computed at run time, so the node is frozen (with that reason,
    not 'give --input-shape'), but everything it needs to know is known."""
    model, a, r = paddle_flatten()
    an = analyze(model, {"x": [1, 3, 4, 4]})
    reasons = {f.where: f.reason for f in an.frozen}
    assert "computed at run time" in reasons["flatten (Reshape)"]
    assert not any("input-shape" in why for why in reasons.values())
