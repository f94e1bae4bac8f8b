"""Residual blocks (smof_onnx.passes.analysis.residual_blocks): found, zeroed, and cut exactly.

The oracle shares no code with the module: it finds which operand of each chosen Add became
zero by *running* the zeroed model under ONNX Runtime, bypasses those Adds in the proto, and
counts the nodes still reaching a graph output by a plain backward walk; the expected FLOPs
are the count_cost rows of the weighted nodes that walk drops.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from smof_onnx.passes.analysis.flops import count_cost
from smof_onnx.passes.analysis.residual_blocks import find_residual_blocks, zero_branches
from smof_onnx.passes.graph import to_graph, to_model
from smof_onnx.passes.pipeline import canonicalize, cut
from tests import cases
from tests.helpers import assert_equivalent, random_inputs, run

# Blocks each architecture has by construction (models/zoo_nets.py): ResNet (3,3,3) basic blocks;
# (2,2,2) bottlenecks; MobileNetV2 stages of 2 blocks -> one residual each (3); C2f with shortcut in
# b2, b4, b6 (the neck's C2f have none). PP-OCR: rec's four SVTR attention/MLP residuals, cls's
# seven MobileNetV3 inverted residuals; det's eight "x + x * SE(x)" residuals (RSE-FPN) gate the
# block input itself, so zeroing a producer never makes them vanish: none.
ZOO_BLOCKS = {"resnet_basic": 9, "resnet_bottleneck": 6, "mobilenet_v2": 3, "yolo": 3}
PPOCR_BLOCKS = {"det": 0, "rec": 4, "cls": 7}


def _canonical(model: onnx.ModelProto, shapes) -> onnx.ModelProto:
    return to_model(canonicalize(to_graph(model), shapes).graph)


def _zero_operand(zeroed: onnx.ModelProto, adds: list[str], shapes) -> dict[str, int]:
    """Add name -> index of its operand that ONNX Runtime sees as all zeros."""
    probe = onnx.ModelProto()
    probe.CopyFrom(zeroed)
    nodes = {n.name: n for n in probe.graph.node}
    del probe.graph.output[:]
    names = [t for a in adds for t in nodes[a].input]
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names)
    out = run(probe, random_inputs(probe, shapes, seed=3))
    found = {}
    for a in adds:
        zero = [i for i, t in enumerate(nodes[a].input) if not np.any(out[t])]
        assert len(zero) == 1, f"{a}: operands zero: {zero}"
        found[a] = zero[0]
    return found


def _live_after_bypass(model: onnx.ModelProto, bypass: dict[str, int]) -> set[str]:
    """Names of the nodes still reaching a graph output once each Add in ``bypass`` forwards
    its non-zero operand."""
    rename = {}
    for n in model.graph.node:
        if n.name in bypass:
            rename[n.output[0]] = n.input[1 - bypass[n.name]]

    def resolve(t: str) -> str:
        while t in rename:
            t = rename[t]
        return t

    made = {o: n for n in model.graph.node if n.name not in bypass for o in n.output}
    live, work = set(), [resolve(o.name) for o in model.graph.output]
    while work:
        n = made.get(work.pop())
        if n is None or n.name in live:
            continue
        live.add(n.name)
        work.extend(resolve(t) for t in n.input if t)
    return live


def _check_removal(model: onnx.ModelProto, shapes, expected_blocks: int, seed: int):
    canon = _canonical(model, shapes)
    analysis = find_residual_blocks(canon, shapes)
    assert len(analysis.blocks) == expected_blocks, [b.id for b in analysis.blocks]
    if not expected_blocks:
        return analysis
    rng = np.random.default_rng(seed)
    k = max(1, len(analysis.blocks) // 2)
    chosen = sorted(str(i) for i in rng.choice([b.id for b in analysis.blocks], size=k, replace=False))
    zeroed = zero_branches(canon, chosen, shapes)
    done = to_model(cut(to_graph(zeroed), shapes).graph)
    assert_equivalent(zeroed, done, shapes)

    bypass = _zero_operand(zeroed, chosen, shapes)
    live = _live_after_bypass(canon, bypass)
    removed = {n.name for n in canon.graph.node} - live
    base = to_model(cut(to_graph(canon), shapes).graph)
    # What the cut removes beyond the unzeroed model's own cut is exactly the oracle's set.
    assert len(base.graph.node) - len(done.graph.node) == len(removed)
    assert not {n.name for n in done.graph.node} & removed
    rows = {lc.name: lc.flops for lc in count_cost(canon, shapes).layers}
    expected_flops = sum(f for name, f in rows.items() if name in removed)
    assert expected_flops > 0
    assert count_cost(base, shapes).flops - count_cost(done, shapes).flops == expected_flops
    # The module's own node sets and FLOPs agree with the oracle.
    mine = set(chosen) | {n for b in analysis.blocks if b.id in chosen for n in b.nodes}
    assert mine == removed
    assert sum(b.flops for b in analysis.blocks if b.id in chosen) == expected_flops
    return analysis


@pytest.mark.parametrize("exporter", cases.EXPORTERS)
@pytest.mark.parametrize("name", sorted(ZOO_BLOCKS))
def test_zoo_blocks_are_removed_exactly(name, exporter):
    shapes = {"input": cases.zoo_input_shape(name)}
    analysis = _check_removal(cases.load_zoo(name, exporter), shapes, ZOO_BLOCKS[name], seed=len(name))
    kinds = {b.shortcut for b in analysis.blocks}
    assert kinds == ({"identity", "projection"} if name.startswith("resnet") else {"identity"})
    for b in analysis.blocks:
        assert len(b.last_producers) == 1 and b.flops > 0


@pytest.mark.parametrize("kind", sorted(PPOCR_BLOCKS))
def test_ppocr_blocks_are_removed_exactly(kind):
    shapes = cases.ppocr_feed_shapes(kind)
    analysis = _check_removal(cases.load_ppocr(kind), shapes, PPOCR_BLOCKS[kind], seed=1)
    if kind == "det":
        gated = [s for s in analysis.skipped if "does not make" in s["reason"]]
        assert len(gated) == 8, analysis.skipped


def test_a_model_without_residuals_has_no_blocks():
    shapes = {"input": cases.zoo_input_shape("unet")}
    analysis = find_residual_blocks(_canonical(cases.load_zoo("unet"), shapes), shapes)
    assert analysis.blocks == []


# --------------------------------------------------------------------------- small graphs

def _conv(name, x, y, cin, cout, rng, k=3):
    w = onnx.numpy_helper.from_array(rng.standard_normal((cout, cin, k, k)).astype(np.float32), name + "_w")
    b = onnx.numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), name + "_b")
    node = helper.make_node("Conv", [x, w.name, b.name], [y], name=name, pads=[k // 2] * 4)
    return node, [w, b]


def _model(nodes, inits, outputs=("y",)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, [1, 4, 8, 8]) for o in outputs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_sub_keeps_only_its_second_operand_as_branch_and_a_shared_weight_is_not_edited():
    rng = np.random.default_rng(0)
    n1, i1 = _conv("c1", "x", "a", 4, 4, rng)
    n2, i2 = _conv("c2", "a", "p", 4, 4, rng)
    sub = helper.make_node("Sub", ["x", "p"], ["s"], name="sub")
    n4, i4 = _conv("c4", "x", "p2", 4, 4, rng)
    n4.input[1] = "c2_w"  # c4 shares c2's weight: zeroing c2 must leave c4 alone
    wrong = helper.make_node("Sub", ["p2", "x"], ["t"], name="sub_wrong_way")  # only x - 0 = x
    join = helper.make_node("Add", ["s", "t"], ["y"], name="join")
    model = _model([n1, n2, sub, n4, wrong, join], i1 + i2 + i4[1:])
    onnx.checker.check_model(model)
    analysis = find_residual_blocks(model)
    assert [b.id for b in analysis.blocks] == ["sub"]
    assert analysis.block("sub").nodes == ("c1", "c2") and analysis.block("sub").last_producers == ("c2",)
    assert {s["where"] for s in analysis.skipped} == {"sub_wrong_way (Sub)", "join (Add)"}
    with pytest.raises(KeyError, match="no residual block 'join'"):
        zero_branches(model, ["join"])
    zeroed = zero_branches(model, ["sub"])
    w = {i.name: onnx.numpy_helper.to_array(i) for i in zeroed.graph.initializer}
    c4 = next(n for n in zeroed.graph.node if n.name == "c4")
    assert w[c4.input[1]].any() and not any(w[t].any() for t in next(
        n for n in zeroed.graph.node if n.name == "c2").input[1:])
    done = to_model(cut(to_graph(zeroed)).graph)
    assert_equivalent(zeroed, done)
    assert {n.name for n in done.graph.node} == {"c4", "sub_wrong_way", "join"}


def test_a_branch_reading_a_second_tensor_is_skipped_with_a_reason():
    rng = np.random.default_rng(1)
    n0, i0 = _conv("c0", "x", "other", 4, 4, rng)
    n1, i1 = _conv("c1", "x", "a", 4, 4, rng)
    mix = helper.make_node("Mul", ["a", "other"], ["m"], name="mix")
    n2, i2 = _conv("c2", "m", "p", 4, 4, rng)
    add = helper.make_node("Add", ["x", "p"], ["y"], name="add")
    # "other" is also a graph output, so c0 is not the branch's: the branch reads x and "other".
    analysis = find_residual_blocks(_model([n0, n1, mix, n2, add], i0 + i1 + i2, outputs=("y", "other")))
    assert analysis.blocks == []
    assert analysis.skipped and "not one block input" in analysis.skipped[0]["reason"]
    # When c0 only feeds the branch, it goes with it: two paths from x are still one branch.
    analysis = find_residual_blocks(_model([n0, n1, mix, n2, add], i0 + i1 + i2))
    assert [b.nodes for b in analysis.blocks] == [("c0", "c1", "mix", "c2")]


def test_zero_branches_leaves_the_input_model_alone():
    rng = np.random.default_rng(2)
    n1, i1 = _conv("c1", "x", "a", 4, 4, rng)
    relu = helper.make_node("Relu", ["a"], ["r"], name="relu")
    n2, i2 = _conv("c2", "r", "p", 4, 4, rng)
    add = helper.make_node("Add", ["p", "x"], ["y"], name="add")
    model = _model([n1, relu, n2, add], i1 + i2)
    before = model.SerializeToString()
    zeroed = zero_branches(model, ["add"])
    assert model.SerializeToString() == before
    w = {i.name: onnx.numpy_helper.to_array(i) for i in zeroed.graph.initializer}
    assert not w["c2_w"].any() and not w["c2_b"].any() and w["c1_w"].any()
    feeds = random_inputs(model)
    np.testing.assert_array_equal(run(zeroed, feeds)["y"], feeds["x"])
