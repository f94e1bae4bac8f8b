"""passes.fold_constants: what is constant for every input folds (shape arithmetic included where
the graph's *inputs* make it static); a symbolic dim is never baked in, stale value_info is not
trusted, and graph inputs / outputs, control flow and random ops stay as they are."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from smof_onnx.passes.fold_constants import fold_constants
from smof_onnx.passes.graph import to_graph, to_model
from tests.helpers import assert_equivalent, initializer, op_counts

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, inits, x_shape, outputs=(("Y", None),), opset=17, inputs=()):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", F32, x_shape), *inputs],
        [helper.make_tensor_value_info(n, F32, s if s is not None else [None] * len(x_shape)) for n, s in outputs],
        list(inits))
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def _i64(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _f32(name, values):
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def _run(model, **kw):
    result = fold_constants(to_graph(model), **kw)
    return result, to_model(result.graph)


def _flatten_by_shape(x_shape):
    """Y = Reshape(X, [Shape(X)[0], -1]): the torch.flatten(x, 1) idiom of exporters."""
    nodes = [helper.make_node("Shape", ["X"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["X", "shape"], ["Y"])]
    inits = [_i64("zero", 0), _i64("ax0", [0]), _i64("minus1", [-1])]
    return _model(nodes, inits, x_shape, outputs=(("Y", [None, None]),))


def test_constant_subgraph_folds_into_one_initializer():
    nodes = [helper.make_node("Transpose", ["A"], ["At"], perm=[1, 0]),
             helper.make_node("Mul", ["At", "two"], ["A2"]),
             helper.make_node("MatMul", ["X", "A2"], ["Y"])]
    before = _model(nodes, [_f32("A", np.arange(6).reshape(2, 3)), _f32("two", 2.0)], [4, 3])
    result, after = _run(before)
    assert op_counts(after) == {"MatMul": 1}
    assert result.stats["folded"] == {"Mul": 1, "Transpose": 1}
    np.testing.assert_array_equal(initializer(after, "A2"), 2.0 * np.arange(6).reshape(2, 3).T)
    assert_equivalent(before, after)


def test_static_shape_arithmetic_folds():
    before = _flatten_by_shape([2, 3, 4, 4])
    result, after = _run(before)
    assert op_counts(after) == {"Reshape": 1}
    np.testing.assert_array_equal(initializer(after, "shape"), [2, -1])
    assert_equivalent(before, after)


def test_symbolic_batch_is_never_baked_in():
    before = _flatten_by_shape(["N", 3, 4, 4])
    result, after = _run(before)
    assert op_counts(after)["Shape"] == 1
    for batch in (1, 3):
        assert_equivalent(before, after, shapes={"X": [batch, 3, 4, 4]})


def test_stale_value_info_claiming_a_static_batch_is_not_trusted():
    """An exporter wrote r: [1,3,4,4] although X's batch is symbolic; folding Shape(r) from it
    would bake batch 1 into the Reshape."""
    model = _flatten_by_shape(["N", 3, 4, 4])
    model.graph.node.insert(0, helper.make_node("Relu", ["X"], ["r"]))
    for n in model.graph.node[1:]:
        n.input[:] = ["r" if i == "X" else i for i in n.input]
    model.graph.value_info.append(helper.make_tensor_value_info("r", F32, [1, 3, 4, 4]))
    result, after = _run(model)
    assert op_counts(after)["Shape"] == 1
    assert_equivalent(model, after, shapes={"X": [3, 3, 4, 4]})


def test_static_dim_of_a_dynamic_tensor_folds():
    """Shape(X)[1] with X: [N, 3, 4, 4] is 3 for every input."""
    nodes = [helper.make_node("Shape", ["X"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["c"], axis=0),
             helper.make_node("Cast", ["c"], ["cf"], to=F32),
             helper.make_node("Mul", ["X", "cf"], ["Y"])]
    before = _model(nodes, [_i64("one", 1)], ["N", 3, 4, 4])
    result, after = _run(before)
    assert op_counts(after) == {"Mul": 1}
    assert_equivalent(before, after, shapes={"X": [2, 3, 4, 4]})


@pytest.mark.parametrize("opset", [11, 12, 13, 17, 21])
def test_unsqueeze_of_a_constant_folds_in_both_signatures(opset):
    """Unsqueeze takes axes as an attribute up to opset 12 and as an input from 13."""
    if opset < 13:
        node = helper.make_node("Unsqueeze", ["b"], ["b1"], axes=[1, 2])
        inits = [_f32("b", [1.0, 2.0, 3.0])]
    else:
        node = helper.make_node("Unsqueeze", ["b", "axes"], ["b1"])
        inits = [_f32("b", [1.0, 2.0, 3.0]), _i64("axes", [1, 2])]
    before = _model([node, helper.make_node("Add", ["X", "b1"], ["Y"])], inits, [2, 3, 4, 4], opset=opset)
    result, after = _run(before)
    assert op_counts(after) == {"Add": 1}
    assert initializer(after, "b1").shape == (3, 1, 1)
    assert_equivalent(before, after)


def test_graph_output_computed_from_constants_stays_a_node_output():
    nodes = [helper.make_node("Relu", ["X"], ["Y"]), helper.make_node("Add", ["A", "A"], ["K"])]
    before = _model(nodes, [_f32("A", [1.0, 2.0])], [2, 2], outputs=(("Y", None), ("K", [2])))
    result, after = _run(before)
    assert op_counts(after) == {"Relu": 1, "Add": 1}
    assert [o.name for o in after.graph.output] == ["Y", "K"]
    assert "K" not in {i.name for i in after.graph.initializer}


def test_unused_graph_input_is_kept():
    extra = helper.make_tensor_value_info("unused", F32, [1])
    before = _model([helper.make_node("Relu", ["X"], ["Y"])], [], [2, 2], inputs=[extra])
    _, after = _run(before)
    assert [i.name for i in after.graph.input] == ["X", "unused"]


def test_control_flow_is_not_evaluated_or_flattened():
    branch = lambda v: helper.make_graph(  # noqa: E731
        [helper.make_node("Add", ["X", f"k{v}"], [f"o{v}"])], f"b{v}", [],
        [helper.make_tensor_value_info(f"o{v}", F32, [2, 2])], [_f32(f"k{v}", float(v))])
    nodes = [helper.make_node("Not", ["f"], ["cond"]),
             helper.make_node("If", ["cond"], ["Y"], then_branch=branch(1), else_branch=branch(2))]
    before = _model(nodes, [numpy_helper.from_array(np.array(False), "f")], [2, 2])
    result, after = _run(before)
    assert op_counts(after) == {"If": 1}  # the Not folded, the If did not
    assert_equivalent(before, after)


def test_random_ops_are_never_folded():
    nodes = [helper.make_node("RandomNormal", [], ["r"], shape=[2, 2], seed=1.0),
             helper.make_node("Add", ["X", "r"], ["Y"])]
    result, after = _run(_model(nodes, [], [2, 2]))
    assert op_counts(after) == {"RandomNormal": 1, "Add": 1}
    assert not result.changed


def test_size_threshold_keeps_large_expands_at_runtime():
    nodes = [helper.make_node("Expand", ["one", "big"], ["e"]), helper.make_node("Add", ["X", "e"], ["Y"])]
    inits = [_f32("one", [1.0]), _i64("big", [64, 64])]
    before = _model(nodes, inits, [64, 64])
    _, kept = _run(before, size_threshold=1024)
    assert op_counts(kept) == {"Expand": 1, "Add": 1}
    _, folded = _run(before, size_threshold=None)
    assert op_counts(folded) == {"Add": 1}
    assert_equivalent(before, kept)
    assert_equivalent(before, folded)


def test_nothing_to_fold_is_not_a_change():
    result, _ = _run(_model([helper.make_node("Relu", ["X"], ["Y"])], [], [2, 2]))
    assert not result.changed and result.stats["folded"] == {}


def test_ppocr_cls_reshaped_biases_fold_and_the_dynamic_batch_survives():
    from models import ppocr
    from smof_onnx.passes.constants_to_initializers import constants_to_initializers
    from tests import cases
    if not (ppocr.ppocr_dir() / ppocr.PPOCR_FILES["cls"]).is_file():
        pytest.skip("PP-OCR cls is not cached (models.ppocr.ppocr_path fetches it)")
    before = cases.load_ppocr("cls")
    graph = constants_to_initializers(to_graph(before)).graph
    result = fold_constants(graph)
    after = to_model(result.graph)
    # 18 conv-bias Reshapes of constants fold; the head's Reshape to [batch, -1] must not.
    assert result.stats["folded"]["Reshape"] == 18 and op_counts(after)["Reshape"] == 1
    assert op_counts(after)["Shape"] == 1
    for batch in (1, 3):
        assert_equivalent(before, after, shapes={"x": [batch, 3, 48, 192]})
