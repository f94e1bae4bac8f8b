"""passes.eliminate_dead_nodes: nodes that reach no graph output and initializers nobody reads
are removed (counted per op type); graph inputs and everything live stay."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from smof_onnx.passes.eliminate_dead_nodes import eliminate_dead_nodes
from smof_onnx.passes.graph import to_graph, to_model
from tests.helpers import assert_equivalent, op_counts

F32 = TensorProto.FLOAT


def _model(nodes, inits=(), inputs=(), outputs=("Y",)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", F32, [1, 4, 5, 5]), *inputs],
                              [helper.make_tensor_value_info(n, F32, [None] * 4) for n in outputs], list(inits))
    opsets = [helper.make_opsetid("", 17)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def _run(model):
    result = eliminate_dead_nodes(to_graph(model))
    return result, to_model(result.graph)


def _w(name="W"):
    return numpy_helper.from_array(np.ones([4, 4, 1, 1], np.float32), name)


def test_dead_branch_and_its_weights_are_removed():
    nodes = [helper.make_node("Relu", ["X"], ["Y"]),
             helper.make_node("Conv", ["X", "W"], ["c"], name="dead_conv"),
             helper.make_node("Sigmoid", ["c"], ["s"], name="dead_sigmoid")]
    before = _model(nodes, [_w()])
    result, after = _run(before)
    assert op_counts(after) == {"Relu": 1}
    assert result.stats["removed"] == {"Conv": 1, "Sigmoid": 1} and result.stats["removed_nodes"] == 2
    assert result.stats["removed_initializers"] == ["W"]
    assert not after.graph.initializer
    assert_equivalent(before, after)


def test_unused_graph_input_is_never_removed():
    unused = helper.make_tensor_value_info("Z", F32, [1])
    before = _model([helper.make_node("Relu", ["X"], ["Y"]), helper.make_node("Neg", ["Z"], ["nz"])],
                    inputs=[unused])
    result, after = _run(before)
    assert result.stats["removed"] == {"Neg": 1}
    assert [i.name for i in after.graph.input] == ["X", "Z"]


def test_node_with_one_live_output_keeps_all_its_outputs():
    nodes = [helper.make_node("Split", ["X", "halves"], ["a", "b"], axis=1),
             helper.make_node("Relu", ["a"], ["Y"])]
    before = _model(nodes, [numpy_helper.from_array(np.array([2, 2], np.int64), "halves")])
    result, after = _run(before)
    assert not result.changed
    assert list(after.graph.node[0].output) == ["a", "b"]
    assert_equivalent(before, after)


def test_tensor_read_only_inside_a_subgraph_is_live():
    then = helper.make_graph([helper.make_node("Identity", ["r"], ["o1"])], "t", [],
                             [helper.make_tensor_value_info("o1", F32, [1, 4, 5, 5])])
    other = helper.make_graph([helper.make_node("Identity", ["X"], ["o2"])], "e", [],
                              [helper.make_tensor_value_info("o2", F32, [1, 4, 5, 5])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [helper.make_node("Relu", ["X"], ["r"]),
             helper.make_node("If", ["cond"], ["Y"], then_branch=then, else_branch=other)]
    before = _model(nodes, [cond])
    result, after = _run(before)
    assert not result.changed and op_counts(after) == {"Relu": 1, "If": 1}
    assert_equivalent(before, after)


def test_a_live_graph_is_unchanged():
    before = _model([helper.make_node("Conv", ["X", "W"], ["Y"], name="conv")], [_w()])
    result, after = _run(before)
    assert not result.changed and result.stats["removed"] == {}
    assert op_counts(after) == {"Conv": 1}
