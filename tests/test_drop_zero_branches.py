"""Specification of passes.drop_zero_branches: x + 0 -> x, exactly, without changing broadcast."""
from __future__ import annotations

import numpy as np

from smof_onnx.passes.drop_zero_branches import drop_zero_branches
from smof_onnx.passes.graph import to_graph, to_model
from tests.helpers import assert_equivalent, op_counts
from tests.test_analysis_channels import Net


def residual(zero_branch: bool, add_is_output: bool = False, op: str = "Add", branch_first: bool = False):
    n = Net()
    x = n.input(["N", 3, 8, 8])
    s = n.conv(x, 3, 4, name="stem")
    h = n.op("Relu", [n.conv(s, 4, 4, name="b1")])
    b = n.conv(h, 4, 4, zero_out=range(4) if zero_branch else (), name="b2")
    t = n.op(op, [b, s] if branch_first else [s, b], name="add")
    return n.model(t if add_is_output else n.conv(t, 4, 2, name="head"))


def run(model):
    res = drop_zero_branches(to_graph(model))
    out = to_model(res.graph)
    assert_equivalent(model, out)
    return out, res


def test_add_with_an_all_zero_branch_becomes_its_other_input():
    m, res = run(residual(True))
    assert res.changed and res.stats["dropped"][0]["node"] == "add"
    assert "Add" not in op_counts(m)
    head = next(n for n in m.graph.node if n.name == "head")
    stem = next(n for n in m.graph.node if n.name == "stem")
    assert head.input[0] == stem.output[0]


def test_zero_first_operand_is_dropped_too():
    m, res = run(residual(True, branch_first=True))
    assert "Add" not in op_counts(m)


def test_graph_output_name_is_kept_through_an_identity():
    model = residual(True, add_is_output=True)
    m, res = run(model)
    assert res.changed and [o.name for o in m.graph.output] == [o.name for o in model.graph.output]
    assert op_counts(m).get("Identity") == 1 and "Add" not in op_counts(m)


def test_non_zero_branch_is_left_alone():
    m, res = run(residual(False))
    assert not res.changed and op_counts(m)["Add"] == 1


def test_sub_drops_only_a_zero_subtrahend():
    m, res = run(residual(True, op="Sub"))
    assert res.changed and "Sub" not in op_counts(m)
    m, res = run(residual(True, op="Sub", branch_first=True))     # 0 - s is -s, not s
    assert not res.changed and op_counts(m)["Sub"] == 1


def test_broadcasting_zero_operand_that_would_change_the_shape_is_refused():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    s = n.conv(x, 3, 4, name="c")
    t = n.op("Add", [n.const(np.zeros((1, 4, 8, 8), np.float32)), n.op("GlobalAveragePool", [s])], name="add")
    m, res = run(n.model(n.conv(t, 4, 2, name="h")))
    assert not res.changed and res.stats["refused"][0]["where"] == "add (Add)"


def test_constant_zero_operand_is_dropped():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    s = n.conv(x, 3, 4, name="c")
    t = n.op("Add", [s, n.const(np.zeros((1, 4, 1, 1), np.float32))], name="add")
    m, res = run(n.model(n.conv(t, 4, 2, name="h")))
    assert res.changed and "Add" not in op_counts(m)
