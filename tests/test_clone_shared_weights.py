"""passes.clone_shared_weights: after the pass no weighted node shares a weight with any other
reader, so a later per-node edit cannot leak into another node; the model computes the same."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from smof_onnx.passes.clone_shared_weights import clone_shared_weights
from smof_onnx.passes.graph import to_graph, to_model
from tests.helpers import assert_equivalent, op_counts

F32 = TensorProto.FLOAT


def _model(nodes, inits, x_shape, outputs=("Y",), out_shapes=None):
    out_shapes = out_shapes or [[None] * len(x_shape)] * len(outputs)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", F32, x_shape)],
                              [helper.make_tensor_value_info(n, F32, s) for n, s in zip(outputs, out_shapes)],
                              inits)
    opsets = [helper.make_opsetid("", 17)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def _f32(name, shape, seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def _run(model):
    result = clone_shared_weights(to_graph(model))
    return result, to_model(result.graph)


def _readers(model):
    """initializer name -> number of input slots reading it."""
    inits = {i.name for i in model.graph.initializer}
    count: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            if i in inits:
                count[i] = count.get(i, 0) + 1
    return count


def _two_convs_sharing(w="W", b="B"):
    nodes = [helper.make_node("Conv", ["X", w, b], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", w, b], ["Y"], name="conv2", pads=[1, 1, 1, 1])]
    return _model(nodes, [_f32(w, [4, 4, 3, 3]), _f32(b, [4], 1)], [1, 4, 5, 5])


def test_two_convs_sharing_weight_and_bias_each_get_their_own():
    before = _two_convs_sharing()
    result, after = _run(before)
    assert result.changed
    assert set(_readers(after).values()) == {1}
    conv1, conv2 = (n for n in after.graph.node if n.op_type == "Conv")
    assert list(conv1.input[1:]) == ["W", "B"]  # the first reader keeps the original names
    assert list(conv2.input[1:]) == ["W__conv2", "B__conv2"]
    assert result.stats["cloned"] == [{"tensor": "W", "clone": "W__conv2", "node": "conv2"},
                                      {"tensor": "B", "clone": "B__conv2", "node": "conv2"}]
    assert_equivalent(before, after)


def test_clones_do_not_share_memory_with_the_original():
    result = clone_shared_weights(to_graph(_two_convs_sharing()))
    tensors = result.graph.tensors()
    assert not np.shares_memory(tensors["W"].values, tensors["W__conv2"].values)


def test_weight_also_read_by_a_plain_op_is_cloned_for_the_conv_only():
    nodes = [helper.make_node("Conv", ["X", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceSum", ["W"], ["s"], keepdims=0),
             helper.make_node("Add", ["c", "s"], ["Y"])]
    before = _model(nodes, [_f32("W", [4, 4, 3, 3])], [1, 4, 5, 5])
    result, after = _run(before)
    by_name = {n.op_type: n for n in after.graph.node}
    assert by_name["Conv"].input[1] == "W__conv" and by_name["ReduceSum"].input[0] == "W"
    assert_equivalent(before, after)


def test_batchnorm_and_gemm_parameters_are_weights_too():
    bn = ["g", "b", "m", "v"]
    nodes = [helper.make_node("BatchNormalization", ["X", *bn], ["n1"], name="bn1"),
             helper.make_node("BatchNormalization", ["n1", *bn], ["n2"], name="bn2"),
             helper.make_node("Flatten", ["n2"], ["f"]),
             helper.make_node("Gemm", ["f", "G"], ["Y"], name="gemm1"),
             helper.make_node("Gemm", ["f", "G"], ["Z"], name="gemm2")]
    inits = [_f32("g", [3]), _f32("b", [3], 1), _f32("m", [3], 2),
             numpy_helper.from_array(np.full(3, 0.5, np.float32), "v"), _f32("G", [12, 5], 3)]
    before = _model(nodes, inits, [2, 3, 2, 2], outputs=("Y", "Z"), out_shapes=[[2, 5], [2, 5]])
    result, after = _run(before)
    assert set(_readers(after).values()) == {1}
    assert len(result.stats["cloned"]) == 5
    assert_equivalent(before, after)


def test_weight_that_is_also_a_graph_output_is_cloned_for_every_reader():
    nodes = [helper.make_node("Conv", ["X", "W"], ["Y"], name="conv", pads=[1, 1, 1, 1])]
    model = _model(nodes, [_f32("W", [4, 4, 3, 3])], [1, 4, 5, 5], outputs=("Y", "W"),
                   out_shapes=[[None] * 4, [4, 4, 3, 3]])
    result, after = _run(model)
    assert after.graph.node[0].input[1] == "W__conv"
    assert [o.name for o in after.graph.output] == ["Y", "W"]


def test_unshared_weights_are_untouched():
    nodes = [helper.make_node("Conv", ["X", "W1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c", "W2"], ["Y"], name="conv2", pads=[1, 1, 1, 1])]
    model = _model(nodes, [_f32("W1", [4, 4, 3, 3]), _f32("W2", [4, 4, 3, 3], 1)], [1, 4, 5, 5])
    result, after = _run(model)
    assert not result.changed and result.stats["cloned"] == []
    assert op_counts(after) == {"Conv": 2}
