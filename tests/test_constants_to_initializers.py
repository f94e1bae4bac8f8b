"""passes.constants_to_initializers: every top-level Constant node becomes an initializer of the
same name and the same dtype/shape/values, whatever attribute form the opset allowed."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from smof_onnx.passes.constants_to_initializers import constants_to_initializers
from smof_onnx.passes.graph import to_graph, to_model
from tests.helpers import assert_equivalent, initializer, op_counts

F32 = TensorProto.FLOAT


def _model(nodes, opset, inits=(), outputs=(("Y", [2, 3]),)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", F32, [2, 3])],
                              [helper.make_tensor_value_info(n, F32, s) for n, s in outputs], list(inits))
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def _const_plus_x(opset, **attr):
    """Y = X + Cast<float>(C) with C a Constant node given by ``attr``."""
    return _model([helper.make_node("Constant", [], ["C"], name="const", **attr),
                   helper.make_node("Cast", ["C"], ["Cf"], to=F32),
                   helper.make_node("Add", ["X", "Cf"], ["Y"])], opset)


def _run(model):
    result = constants_to_initializers(to_graph(model))
    return result, to_model(result.graph)


CASES = [  # (min opset, attribute, expected array)
    (11, {"value": numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))},
     np.arange(6, dtype=np.float32).reshape(2, 3)),
    (11, {"value": numpy_helper.from_array(np.array([1, -2, 3], np.int32))}, np.array([1, -2, 3], np.int32)),
    (12, {"value_float": 2.5}, np.array(2.5, np.float32)),
    (12, {"value_floats": [1.0, 2.0, 3.0]}, np.array([1, 2, 3], np.float32)),
    (12, {"value_int": 7}, np.array(7, np.int64)),
    (12, {"value_ints": [4, 5, 6]}, np.array([4, 5, 6], np.int64)),
]


@pytest.mark.parametrize("opset,case", [(o, i) for o in (11, 12, 13, 17, 21)
                                        for i, c in enumerate(CASES) if o >= c[0]])
def test_constant_becomes_initializer_with_same_name_dtype_and_values(opset, case):
    _, attr, expected = CASES[case]
    before = _const_plus_x(opset, **attr)
    result, after = _run(before)
    assert "Constant" not in op_counts(after)
    got = initializer(after, "C")
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert result.stats["converted"] == 1 and result.stats["tensors"] == ["C"]
    assert_equivalent(before, after)


def test_bfloat16_tensor_keeps_its_exact_type():
    tensor = helper.make_tensor("v", TensorProto.BFLOAT16, [3], [1.5, -2.0, 0.25])
    before = _const_plus_x(17, value=tensor)
    _, after = _run(before)
    init = next(i for i in after.graph.initializer if i.name == "C")
    assert init.data_type == TensorProto.BFLOAT16
    assert_equivalent(before, after)


def test_constant_that_is_a_graph_output_stays_a_node():
    model = _model([helper.make_node("Constant", [], ["C"], name="const",
                                     value=numpy_helper.from_array(np.ones(3, np.float32))),
                    helper.make_node("Relu", ["X"], ["Y"])], 13, outputs=(("Y", [2, 3]), ("C", [3])))
    result, after = _run(model)
    assert not result.changed and op_counts(after)["Constant"] == 1
    assert result.stats["refused"] == [{"node": "const", "reason": "its output 'C' is a graph output"}]
    assert [o.name for o in after.graph.output] == ["Y", "C"]


def test_string_constant_is_refused_with_reason():
    model = _model([helper.make_node("Constant", [], ["S"], name="s", value_string="hi"),
                    helper.make_node("Relu", ["X"], ["Y"])], 13)
    result, after = _run(model)
    assert op_counts(after)["Constant"] == 1
    assert result.stats["refused"][0]["node"] == "s"
    assert "value_string" in result.stats["refused"][0]["reason"]


def test_constants_inside_subgraphs_are_left_alone():
    branch = lambda v: helper.make_graph(  # noqa: E731
        [helper.make_node("Constant", [], [f"k{v}"], value_float=float(v)),
         helper.make_node("Add", ["X", f"k{v}"], [f"o{v}"])], f"b{v}", [],
        [helper.make_tensor_value_info(f"o{v}", F32, [2, 3])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    before = _model([helper.make_node("If", ["cond"], ["Y"], then_branch=branch(1), else_branch=branch(2))],
                    13, inits=[cond])
    result, after = _run(before)
    assert not result.changed
    assert [n.op_type for n in after.graph.node[0].attribute[0].g.node] == ["Constant", "Add"]
    assert_equivalent(before, after)


def test_ppocr_cls_loses_every_constant_node():
    from models import ppocr
    from tests import cases
    if not (ppocr.ppocr_dir() / ppocr.PPOCR_FILES["cls"]).is_file():
        pytest.skip("PP-OCR cls is not cached (models.ppocr.ppocr_path fetches it)")
    before = cases.load_ppocr("cls")
    result, after = _run(before)
    assert "Constant" not in op_counts(after)
    assert result.stats["converted"] == 308 and not result.stats["refused"]
    names = {n.output[0] for n in before.graph.node if n.op_type == "Constant"}
    assert names == {i.name for i in after.graph.initializer}
    onnx.checker.check_model(after, full_check=True)
    assert_equivalent(before, after, shapes=cases.ppocr_feed_shapes("cls"))
