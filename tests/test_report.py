"""The report says what the cut did in the schema of design 5, built from counts and pass results."""
from __future__ import annotations

import json

import onnx_graphsurgeon as gs
import pytest

from smof_onnx.passes.analysis.flops import LayerCost, ModelCost
from smof_onnx.passes.base import PassResult
from smof_onnx.passes.pipeline import PipelineResult
from smof_onnx import report
from smof_onnx.verify import Latency, LatencyComparison, VerifyResult


def _lc(name, op="Conv", kernel=(3, 3), cin=8, cout=16, flops=1000, params=100):
    return LayerCost(name, op, kernel, cin, cout, 1, flops, params, (1, cout, 4, 4))


BEFORE = ModelCost(flops=3000, params=300, layers=[_lc("conv1"), _lc("conv2", flops=1500), _lc("fc", "Gemm", (), 16,
                                                                                                 10, 500)])
AFTER = ModelCost(flops=1000, params=120, layers=[_lc("conv1", kernel=(3, 1), cout=12, flops=400),
                                                   _lc("fc", "Gemm", (), 12, 10, 600)])


LRN_FROZEN = {"where": "lrn_1", "reason": "LRN has no rule"}


def _pipeline():
    g = gs.Graph()
    return PipelineResult(g, [
        ("cut_dead_channels", PassResult(g, True, {"removed": 4, "frozen": [LRN_FROZEN]})),
        ("cut_kernel_borders", PassResult(g, True, {"cut": ["conv1"]})),
        ("cut_dead_channels", PassResult(g, False, {"frozen": [LRN_FROZEN]})),
    ], rounds=2)


def test_totals_and_ratio():
    r = report.build_report(BEFORE, AFTER)
    assert r["flops"] == {"before": 3000, "after": 1000, "ratio": pytest.approx(1000 / 3000)}
    assert r["params"] == {"before": 300, "after": 120}
    assert "latency_ms" not in r and "verify" not in r and "quality" not in r and "method" not in r


def test_layers_are_matched_by_name_and_a_removed_layer_reads_zero_after():
    rows = {row["name"]: row for row in report.build_report(BEFORE, AFTER)["layers"]}
    assert list(rows) == ["conv1", "conv2", "fc"]
    assert rows["conv1"] == {"name": "conv1", "op": "Conv", "kernel_before": [3, 3], "kernel_after": [3, 1],
                             "in_before": 8, "in_after": 8, "out_before": 16, "out_after": 12,
                             "flops_before": 1000, "flops_after": 400}
    assert rows["conv2"]["kernel_after"] is None
    assert (rows["conv2"]["out_after"], rows["conv2"]["flops_after"]) == (0, 0)
    assert (rows["fc"]["in_before"], rows["fc"]["in_after"]) == (16, 12)


def test_verify_latency_frozen_quality_and_method_sections():
    verify = VerifyResult(max_rel_err=3e-7, inputs=4, ok=True, per_output={"y": 3e-7})
    lat = LatencyComparison(Latency(2.0, 50, 2, 1), Latency(1.0, 50, 2, 1), self_ratio=1.01)
    r = report.build_report(BEFORE, AFTER, pipeline=_pipeline(), verify=verify, latency=lat,
                            quality={"agreement": 0.98}, method={"name": "qr", "target_flops": 0.5})
    assert r["verify"]["max_rel_err"] == 3e-7 and r["verify"]["inputs"] == 4
    assert r["latency_ms"]["before"] == 2.0 and r["latency_ms"]["after"] == 1.0
    assert r["latency_ms"]["speedup"] == 2.0 and r["latency_ms"]["threads"] == 2
    assert r["frozen"] == [{"where": "lrn_1", "reason": "LRN has no rule", "pass": "cut_dead_channels"}]
    assert r["quality"] == {"agreement": 0.98} and r["method"]["name"] == "qr"
    assert r["rounds"] == 2
    assert {p["pass"]: p["stats"] for p in r["passes"]}["cut_dead_channels"]["removed"] == 4
    assert json.loads(json.dumps(r)) == r


def test_write_report_is_atomic_json(tmp_path):
    r = report.build_report(BEFORE, AFTER)
    path = report.write_report(r, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text()) == r
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_table_has_aligned_columns_a_totals_row_and_the_refusals_below():
    verify = VerifyResult(max_rel_err=3e-7, inputs=4, ok=True, per_output={"y": 3e-7})
    text = report.format_table(report.build_report(BEFORE, AFTER, pipeline=_pipeline(), verify=verify))
    lines = text.splitlines()
    header, rule = lines[0], lines[1]
    assert header.split() == ["layer", "op", "kernel", "in", "out", "FLOPs", "before", "FLOPs", "after", "kept"]
    # Every column starts where the rule's dashes start.
    starts = [i for i, c in enumerate(rule) if c == "-" and (i == 0 or rule[i - 1] == " ")]
    conv1 = next(line for line in lines if line.startswith("conv1"))
    assert conv1[starts[1]:].startswith("Conv") and conv1[starts[2]:].startswith("3x3 -> 3x1")
    assert conv1[starts[4]:].startswith("16 -> 12")
    total = next(line for line in lines if line.startswith("total"))
    assert total.split() == ["total", "3.00K", "1.00K", "0.33"]
    # Right-aligned numbers end at the same column.
    assert len(total) == len(conv1.rstrip()) == len(rule)
    assert "verified: max rel err 3.00e-07 over 4 inputs" in text
    after_total = text[text.index("total"):]
    assert "lrn_1: LRN has no rule" in after_total


def test_human_units():
    assert [report.human(n) for n in (999, 1000, 2_500_000, 4_100_000_000)] == ["999", "1.00K", "2.50M", "4.10G"]


def test_inspect_table_lists_layers_totals_and_frozen_groups():
    info = {"opset": 17, "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 3, 8, 8]}], "outputs": [],
            "flops": 3000, "params": 300, "layers": [lc.to_dict() for lc in BEFORE.layers],
            "channel_groups": [{"id": "0", "size": 16, "frozen": False, "reason": None},
                               {"id": "1", "size": 10, "frozen": True, "reason": "graph output 'y'"}],
            "frozen": []}
    text = report.format_inspect(info)
    assert "conv2" in text and "3.00K" in text
    assert "channel groups: 2 (1 cuttable, 1 frozen)" in text
    assert "frozen 1 (10 ch): graph output 'y'" in text


# --- layers matched by identity; inspect's reasons --------------------------------------------

def _unnamed_model(add_constant=None):
    """x -> convA (all zero: a dead branch) + convB -> Add -> convC -> y, every node unnamed;
    with ``add_constant`` a scalar Add follows a Relu on convC's input instead of the branches."""
    import numpy as np
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(n, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), n)

    inits = [init("WA", np.zeros((8, 3, 3, 3))), init("BA", np.zeros(8)), init("WB", rng.standard_normal((8, 3, 3, 3))),
             init("BB", np.zeros(8)), init("WC", rng.standard_normal((4, 8, 3, 3))), init("BC", np.zeros(4))]
    if add_constant is None:
        nodes = [helper.make_node("Conv", ["x", "WA", "BA"], ["a"], pads=[1] * 4),
                 helper.make_node("Conv", ["x", "WB", "BB"], ["b"], pads=[1] * 4),
                 helper.make_node("Add", ["a", "b"], ["s"])]
    else:
        inits.append(init("k", np.array(add_constant)))
        nodes = [helper.make_node("Conv", ["x", "WB", "BB"], ["b"], pads=[1] * 4),
                 helper.make_node("Relu", ["b"], ["r"]), helper.make_node("Add", ["r", "k"], ["s"])]
    nodes.append(helper.make_node("Conv", ["s", "WC", "BC"], ["y"], pads=[1] * 4))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", 1, [1, 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_unnamed_layers_are_matched_by_identity_when_the_cut_removes_one():
    from smof_onnx import api

    model = _unnamed_model()
    _, rep = api.cut(model)
    rows = rep["layers"]
    weights = {n.input[1]: i for i, n in enumerate(model.graph.node) if n.op_type == "Conv"}
    # one row per layer of the input, none "added"; the dead branch convA is the removed one
    assert len(rows) == 3 and all(r["kernel_before"] is not None for r in rows)
    by_weight = dict(zip(["WA", "WB", "WC"], rows))
    assert [r["name"] for r in rows] == [f"Conv_{weights[w]}" for w in ("WA", "WB", "WC")]
    assert by_weight["WA"]["kernel_after"] is None and by_weight["WA"]["flops_after"] == 0
    for w in ("WB", "WC"):  # untouched layers read the same before and after
        r = by_weight[w]
        assert (r["in_before"], r["out_before"], r["flops_before"]) == (r["in_after"], r["out_after"], r["flops_after"])


def test_name_nodes_names_unnamed_and_duplicate_nodes_uniquely_and_deterministically():
    from onnx import helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="Relu_0"),
                           helper.make_node("Relu", ["b"], ["c"], name="r"), helper.make_node("Relu", ["c"], ["y"], name="r")],
                          "g", [helper.make_tensor_value_info("x", 1, [1])], [helper.make_tensor_value_info("y", 1, [1])])
    model = helper.make_model(g)
    assert report.name_nodes(model) == 2
    names = [n.name for n in model.graph.node]
    assert names == ["Relu_0_2", "Relu_0", "r", "r_3"] and len(set(names)) == 4
    assert report.name_nodes(model) == 0  # stable once named


def test_inspect_gives_each_group_its_real_reason():
    from smof_onnx import api

    info = api.inspect(_unnamed_model())
    frozen = [g for g in info["channel_groups"] if g["frozen"]]
    assert frozen and all(g["reason"] not in (None, "None", "") for g in frozen)
    reasons = {g["reason"] for g in frozen}
    assert "graph input 'x': graph inputs keep their shape" in reasons
    assert "graph output 'y': graph outputs keep their shape" in reasons
    assert all(g["gateable"] and g["reason"] is None for g in info["channel_groups"] if not g["frozen"])


def test_inspect_names_groups_that_are_neither_removable_nor_gateable_and_why():
    from smof_onnx import api

    info = api.inspect(_unnamed_model(add_constant=0.0886))
    blocked = [g for g in info["channel_groups"] if not g["frozen"] and not g["gateable"]]
    assert len(blocked) == 1 and blocked[0]["size"] == 8
    # the analysis's own reason: the constant, the node that made it and the reader that cannot fold it
    assert "constant 0.0886 after Add 'Add_2'" in blocked[0]["reason"] and "is padded" in blocked[0]["reason"]
    assert any(f["reason"] == blocked[0]["reason"] for f in info["frozen"])
    text = report.format_inspect(info)
    assert "1 neither removable nor gateable" in text and "Add_2" in text
