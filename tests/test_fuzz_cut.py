"""Fuzzing the cut with random CNN-like graphs (tests/graphgen.py).

For every generated model M (zeroed weights inside, BN unfused, names random or empty, a fixed
or a free batch), ``smof_onnx.passes.pipeline.cut`` gives C, and:

1. C computes what M computes: ONNX Runtime on random inputs, max |a-b| / max|a| <= 1e-5 per
   output (tests/helpers.py), at the model's batch and, for a free batch, at another batch;
2. C passes ``onnx.checker`` (full check);
3. C keeps the interface: input and output names, dtypes and dims (symbolic ones included);
4. C is the best cut the independent oracle (tests/oracle.py) allows, judged on the canonical
   form K of M (the graph the cut starts from): channel counts within the oracle's bounds,
   kernels border-free, zero residual branches gone (tests/test_cut_end_to_end.py's checks).
   Freezes the cut reports excuse their slots; on unnamed graphs a freeze names only the op,
   so every node of that op is excused.

The fast profile (``fuzz-fast``, derandomized) runs in the default test run; the long one is
``python bench/fuzz.py --cases 20000`` (or ``SMOF_FUZZ_PROFILE=fuzz-long pytest tests/test_fuzz_cut.py``).
Every case the fuzzer found is kept below as a small fixed graph (an exactness failure seen on
a tree where the analysis already called constant channels removable before the cut folded them,
and the oracle's false alarms: both Add operands zero, constant channels, regrouped convs).
"""
from __future__ import annotations

import os
import types

import numpy as np
import onnx
from hypothesis import given, settings

from smof_onnx.passes import graph as pgraph
from smof_onnx.passes import pipeline
import tests.conftest  # noqa: F401 -- registers the fuzz profiles (also outside pytest: bench/fuzz.py)
from tests import graphgen, oracle
from tests import test_cut_end_to_end as e2e
from tests.helpers import NOISE_FACTOR, REL_TOL, max_rel_err, random_inputs, run, session

PROFILE = os.environ.get("SMOF_FUZZ_PROFILE", "fuzz-fast")


def fuzz_settings(share: float = 1.0) -> settings:
    """The active fuzz profile, with ``share`` of its examples (tests split the budget)."""
    parent = settings.get_profile(PROFILE)
    return settings(parent=parent, max_examples=max(3, int(parent.max_examples * share)))


class NotBestCut(AssertionError):
    """Exact, valid, but keeps something the oracle proves removable."""


def cut_model(model: onnx.ModelProto, shapes) -> tuple[onnx.ModelProto, list[dict]]:
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result = pipeline.cut(pgraph.to_graph(work), shapes)
    return pgraph.to_model(result.graph), result.frozen()


def assert_exact(before: onnx.ModelProto, after: onnx.ModelProto, case: graphgen.Case) -> float:
    """Properties 1-3 (see the module docstring); returns the worst relative error."""
    onnx.checker.check_model(after, full_check=True)
    inits = {i.name for i in before.graph.initializer}
    assert e2e._signature(after.graph.input, {i.name for i in after.graph.initializer}) == \
        e2e._signature(before.graph.input, inits), "graph inputs changed"
    assert e2e._signature(after.graph.output) == e2e._signature(before.graph.output), "graph outputs changed"
    shapes = [case.shapes]
    if case.free_batch:
        shapes.append({k: [3, *v[1:]] for k, v in case.shapes.items()})
    worst = 0.0
    runs = [session(before), session(after)]
    names = [o.name for o in runs[0].get_outputs()]

    def outputs(k: int, feeds) -> dict[str, np.ndarray]:
        return dict(zip(names, runs[k].run(names, feeds)))

    for i, shp in enumerate(shapes):
        for seed in (0, 1):
            feeds = random_inputs(before, shp, seed=seed + 10 * i)
            reference = outputs(0, feeds)
            err = max_rel_err(reference, outputs(1, feeds))
            if err > REL_TOL:  # the gate's rule: tolerated only within 4x the model's own float32 rounding
                noise = max_rel_err(reference, run(before, feeds, optimize=True))
                assert err <= NOISE_FACTOR * noise, (f"max rel err {err:.3g} > {REL_TOL} and > {NOISE_FACTOR:g} x "
                                                     f"the model's own rounding {noise:.3g} (inputs {shp}, seed {seed})")
            worst = max(worst, err)
    return worst


def _frozen_nodes(frozen: list[dict], canonical: onnx.ModelProto, named: bool) -> set[str]:
    """Nodes of ``canonical`` whose channel slots the cut reported frozen. A freeze names
    ``node (Op)``; on an unnamed graph only the op is known, so every node of that op counts."""
    by_name = {n.name: n.op_type for n in canonical.graph.node}
    out = set()
    for f in frozen:
        assert f["reason"] and str(f["reason"]).strip(), f"freeze without a reason: {f}"
        m = e2e._WHERE_NODE.match(f["where"])
        if not m or f.get("pass", "cut_dead_channels") != "cut_dead_channels":
            continue
        if named and by_name.get(m["node"]) == m["op"]:
            out.add(m["node"])
        elif not named:
            out |= {n for n, op in by_name.items() if op == m["op"]}
    return out


def _kernel_refused(frozen: list[dict], canonical: onnx.ModelProto, named: bool) -> set[str]:
    """Convs whose kernel cut_kernel_borders refused to shrink with a reason (e.g. a crop longer
    than the input); an entirely zero kernel is no excuse (the channel passes remove it)."""
    out = set()
    for f in frozen:
        if f.get("pass") != "cut_kernel_borders" or "entirely zero" in str(f["reason"]):
            continue
        if named:
            out.add(f["where"])
        else:
            out |= {n.name for n in canonical.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    return out


def best_cut_failures(model: onnx.ModelProto, cut: onnx.ModelProto, frozen: list[dict],
                      case: graphgen.Case) -> list[str]:
    """Property 4: how ``cut`` falls short of the oracle's best cut of ``model`` (empty: none)."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    canonical = pgraph.to_model(pipeline.canonicalize(pgraph.to_graph(work), case.shapes).graph)
    cut_ = cut
    if not case.named:
        # no names to match layers by: name every weighted node after its weight initializer
        # (the cut keeps those names; an output may be renamed, e.g. when a bias Add is folded
        # in after a MatMul), every other node after its (unique) first output, in both
        cut_ = onnx.ModelProto()
        cut_.CopyFrom(cut)
        for m in (canonical, cut_):
            inits = {i.name for i in m.graph.initializer}
            for n in m.graph.node:
                weighted = n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1 \
                    and n.input[1] in inits
                n.name = "w:" + n.input[1] if weighted else "n:" + n.output[0]
    feeds = [random_inputs(canonical, case.shapes, seed=s) for s in (11, 12)]
    ctx = types.SimpleNamespace(structure=oracle.Structure(canonical, feeds[0]), feeds=feeds)
    bad = e2e.best_possible_failures(ctx, canonical, cut_, _frozen_nodes(frozen, canonical, case.named))
    refused = _kernel_refused(frozen, canonical, case.named)
    return [b for b in bad if not (" kernel " in b and b.split(" (")[0] in refused)]


def check_case(case: graphgen.Case, optimal: bool = True) -> tuple[float, list[str]]:
    """Cut ``case`` and assert properties 1-3 (raises); returns (worst error, property-4 shortfalls)."""
    cut, frozen = cut_model(case.model, case.shapes)
    err = assert_exact(case.model, cut, case)
    return err, (best_cut_failures(case.model, cut, frozen, case) if optimal else [])


def _check(case: graphgen.Case) -> None:
    try:
        _, bad = check_case(case)
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}\n  {graphgen.describe(case)}") from exc
    if bad:
        raise NotBestCut("not the best cut:\n  " + "\n  ".join(bad) + f"\n  {graphgen.describe(case)}")


# ------------------------------------------------------------------------ the fuzz tests

@fuzz_settings(1.0)
@given(case=graphgen.graphs())
def test_random_graphs_cut_exactly_validly_and_optimally(case):
    _check(case)


@fuzz_settings(0.1)
@given(case=graphgen.graphs())
def test_random_graphs_through_the_api_pass_its_gate_and_keep_the_interface(case):
    from smof_onnx import api

    cut, report = api.cut(case.model, input_shapes=case.shapes)
    assert report["verify"]["max_rel_err"] <= REL_TOL
    assert_exact(case.model, cut, case)


def test_the_generator_covers_the_operators_and_features_it_promises():
    """Over 300 seeds the generator emits every op family, 1-D/2-D/3-D, grouped and depthwise
    convs, auto_pad, free and fixed batch, named and unnamed graphs (a generator that silently
    stopped producing a feature would make the fuzz tests pass vacuously)."""
    cases = [graphgen.from_seed(s) for s in range(300)]
    ops = graphgen.ops_used(cases)
    assert {"Conv", "ConvTranspose", "BatchNormalization", "Relu", "LeakyRelu", "PRelu", "Clip", "HardSwish",
            "Sigmoid", "Tanh", "Add", "Sub", "Mul", "GlobalAveragePool", "Concat", "Split", "Slice", "MaxPool",
            "AveragePool", "Resize", "Pad", "Flatten", "Reshape", "Transpose", "Gemm", "MatMul",
            "HardSigmoid"} <= ops
    ranks = {len(c.shapes["input"]) - 2 for c in cases}
    assert ranks == {1, 2, 3}
    convs = [(n, {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
             for c in cases for n in c.model.graph.node if n.op_type == "Conv"]
    assert any(a.get("group", 1) > 1 for _, a in convs)
    assert {a.get("auto_pad", b"NOTSET") for _, a in convs} >= {b"SAME_UPPER", b"SAME_LOWER", b"VALID", b"NOTSET"}
    assert any(max(a.get("strides", [1])) > 1 for _, a in convs) and any(max(a.get("dilations", [1])) > 1
                                                                          for _, a in convs)
    assert {c.free_batch for c in cases} == {True, False} and {c.named for c in cases} == {True, False}
    assert any(len(c.model.graph.output) > 1 for c in cases)
    assert any(len(c.model.graph.value_info) for c in cases)
    # the masks really zero something the cut can remove in most cases
    zeroed = sum(any(not onnx.numpy_helper.to_array(i).any() for i in c.model.graph.initializer if i.dims)
                 or any(np.any(onnx.numpy_helper.to_array(i) == 0) for i in c.model.graph.initializer
                        if len(i.dims) >= 3) for c in cases)
    assert zeroed > 200


# ------------------------------------------------------------------------ found by the fuzzer

def _fixed_case(nodes, arrays: dict, in_shape: list, outputs: list[str], free: bool = True) -> graphgen.Case:
    from onnx import TensorProto, helper, numpy_helper

    dims = ["N", *in_shape[1:]] if free else in_shape
    graph = helper.make_graph(nodes, "regression", [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(np.asarray(a, np.float32 if np.asarray(a).dtype.kind == "f"
                                                                  else np.int64), n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", graphgen.OPSET)])
    model.ir_version = 8
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.output}
    for out in model.graph.output:  # declared with dtype and shape, as exporters write them
        out.CopyFrom(inferred[out.name])
    return graphgen.Case(model, {"input": in_shape}, free, named=True, blocks=["fixed"])


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) / np.sqrt(max(shape[1:2] or [1]))


def _cut_and_count(case):
    _check(case)
    cut, _ = cut_model(case.model, case.shapes)
    return cut, {i.name: onnx.numpy_helper.to_array(i) for i in cut.graph.initializer}


def test_constant_channels_through_pool_and_flatten_are_cut_exactly():
    """Fuzz seed 5 (3-D, a tree where the analysis already called constant channels removable but
    the cut did not fold them yet: rel err 0.0988). Zeroed filters -> Relu gives 0; the depthwise
    conv's bias turns 0 into a constant; BN, GlobalAveragePool and Flatten carry it to the Gemm."""
    from onnx import helper

    w1 = _rand(5, 2, 1, 1)
    b1 = _rand(5, seed=1)
    w1[[1, 3]] = 0
    b1[[1, 3]] = 0
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["a"], name="c1"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wd", "bd"], ["d"], group=5, name="dw"),
             helper.make_node("BatchNormalization", ["d", "g", "be", "m", "v"], ["n"], name="bn"),
             helper.make_node("GlobalAveragePool", ["n"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1, name="fc")]
    arrays = {"w1": w1, "b1": b1, "wd": _rand(5, 1, 1, 1, seed=2), "bd": _rand(5, seed=3),
              "g": np.full(5, 1.2), "be": _rand(5, seed=4), "m": _rand(5, seed=5), "v": np.full(5, 0.7),
              "wg": _rand(3, 5, seed=6), "bg": _rand(3, seed=7)}
    _cut_and_count(_fixed_case(nodes, arrays, [2, 2, 4, 4], ["y"]))


def test_relu_of_a_negative_constant_channel_is_zero_and_goes_and_the_oracle_allows_it():
    """Fuzz seed 10332: a depthwise filter that is zero leaves its bias, -0.5; Relu makes that 0,
    so the channel goes (Pad, Flatten and the Gemm's rows with it). The oracle measures on a copy
    where Relu is sign-agnostic, so it saw a nonzero input-independent channel and demanded it be
    kept; such channels are now 'maybe' (constant) for the oracle, and the cut's removal stands."""
    from onnx import helper

    wd = _rand(4, 1, 1, 1, seed=2)
    wd[2] = 0
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Sigmoid", ["a"], ["s"], name="sig"),
             helper.make_node("Conv", ["s", "wd", "bd"], ["d"], group=4, name="dw"),
             helper.make_node("Relu", ["d"], ["r"], name="relu"),
             helper.make_node("Pad", ["r", "pads"], ["p"], mode="constant", name="pad"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wg"], ["y"], name="fc")]
    arrays = {"w1": _rand(4, 1, 3, 3), "b1": _rand(4, seed=1), "wd": wd, "bd": np.array([0.3, 0.1, -0.5, 0.2]),
              "pads": np.array([0, 0, 1, 0, 0, 0, 0, 1]), "wg": _rand(4 * 5 * 5, 3, seed=1)}
    _, inits = _cut_and_count(_fixed_case(nodes, arrays, [1, 1, 4, 4], ["y"], free=False))
    assert inits["wd"].shape[0] == 3 and inits["wg"].shape[0] == 3 * 5 * 5


def test_a_sum_of_two_zero_branches_keeps_one_operand_and_that_is_the_best_cut():
    """Fuzz seeds 9 and 35: both operands of an Add are entirely zero; the cut keeps one of them
    (the sum is still read), which the oracle had reported as a zero branch left in place."""
    from onnx import helper

    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["x"], name="stem"),
             helper.make_node("Relu", ["x"], ["xr"], name="relu"),
             helper.make_node("Conv", ["xr", "wa"], ["a"], pads=[1, 1, 1, 1], name="branch_a"),
             helper.make_node("Conv", ["xr", "wb"], ["b"], name="branch_b"),
             helper.make_node("Add", ["a", "b"], ["s"], name="add"),
             helper.make_node("GlobalAveragePool", ["s"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc")]
    arrays = {"w0": _rand(4, 2, 1, 1), "b0": _rand(4, seed=1), "wa": np.zeros((3, 4, 3, 3)),
              "wb": np.zeros((3, 4, 1, 1)), "wg": _rand(3, 2, seed=2), "bg": _rand(2, seed=3)}
    cut, _ = _cut_and_count(_fixed_case(nodes, arrays, [2, 2, 5, 5], ["y"]))
    assert sum(n.op_type == "Add" for n in cut.graph.node) == 0


def test_a_grouped_conv_whose_groups_lose_inputs_is_regrouped_and_the_oracle_allows_it():
    """Fuzz seed 12228: a depthwise conv with one live filter feeds a 2-group conv (8 -> 4); the
    cut keeps one input channel and regroups the conv, which the oracle (one slot per group)
    had called a shortfall of 3 channels. Grouped convs with several channels per group are now
    'unknown' to the oracle; the cut is exact and checked as before."""
    from onnx import helper

    wd = np.zeros((8, 1, 1), np.float32)
    wd[3] = 1.3
    nodes = [helper.make_node("Conv", ["input", "w1"], ["a"], pads=[1, 1], name="c1"),
             helper.make_node("Conv", ["a", "wd"], ["d"], group=8, name="dw"),
             helper.make_node("PRelu", ["d", "slope"], ["p"], name="prelu"),
             helper.make_node("Conv", ["p", "wg", "bg"], ["g"], group=2, name="grouped"),
             helper.make_node("HardSwish", ["g"], ["h"], name="hswish"),
             helper.make_node("Transpose", ["h"], ["t"], perm=[0, 2, 1], name="nlc"),
             helper.make_node("Flatten", ["t"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc")]
    arrays = {"w1": _rand(8, 3, 3), "wd": wd, "slope": np.full((8, 1), 0.2), "wg": _rand(4, 4, 1, seed=3),
              "bg": _rand(4, seed=4), "wf": _rand(48, 4, seed=5), "bf": _rand(4, seed=6)}
    _, inits = _cut_and_count(_fixed_case(nodes, arrays, [2, 3, 12], ["y"]))
    assert inits["w1"].shape[0] < 8
