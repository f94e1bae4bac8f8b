"""cut_kernel_borders: zero kernel borders leave Conv / ConvTranspose exactly (design 3.1).

Each test builds a small model whose weights have known zero borders, runs the pass, and
checks (1) ONNX Runtime gives the same outputs (rel err <= 1e-5, full checker), (2) the kernel
that is left is the one computed here independently of the pass, (3) pads never go negative
and crops appear exactly where a pad would have.
"""
from __future__ import annotations

import json

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from smof_onnx.passes.base import PassError
from smof_onnx.passes.cut_kernel_borders import cut_kernel_borders
from smof_onnx.passes.explicit_pads import explicit_pads
from smof_onnx.passes.graph import to_graph, to_model
from tests.helpers import assert_equivalent, conv_weights, op_counts

RNG = np.random.default_rng(1234)


def dense(shape, rng=RNG):
    """Random weights with no zero at all, so the only zeros are the ones a test puts there."""
    w = rng.standard_normal(shape).astype(np.float32)
    return np.where(np.abs(w) < 0.1, 0.5, w).astype(np.float32)


def zero_border(w, axis, lo=0, hi=0):
    """Zero the first ``lo`` and last ``hi`` slices of spatial ``axis`` (0-based) of ``w``."""
    w = w.copy()
    ax = 2 + axis
    idx = [slice(None)] * w.ndim
    if lo:
        idx[ax] = slice(0, lo)
        w[tuple(idx)] = 0
    if hi:
        idx[ax] = slice(w.shape[ax] - hi, None)
        w[tuple(idx)] = 0
    return w


def expected_kernel(w):
    """Kernel after an optimal cut, counted slice by slice (independent of the pass)."""
    out = []
    for ax in range(2, w.ndim):
        k = w.shape[ax]
        zero = [not np.any(np.take(w, j, axis=ax)) for j in range(k)]
        lo = next((j for j in range(k) if not zero[j]), k)
        hi = next((j for j in range(k) if not zero[k - 1 - j]), k)
        out.append(max(k - lo - hi, 0))
    return out


def conv_model(x_shape, convs, opset=17, out_rank=None, extra_nodes=(), extra_inits=()):
    """One graph input ``x``; ``convs`` = [(name, input, output, weight, attrs, op)], outputs = the
    outputs of every conv nobody else reads."""
    nodes, inits, produced, read = [], list(extra_inits), [], set()
    for name, inp, out, w, attrs, op in convs:
        inits.append(numpy_helper.from_array(w, f"{name}_w"))
        inits.append(numpy_helper.from_array(dense((w.shape[0] if op == "Conv" else w.shape[1]
                                                    * attrs.get("group", 1),)), f"{name}_b"))
        nodes.append(helper.make_node(op, [inp, f"{name}_w", f"{name}_b"], [out], name=name, **attrs))
        produced.append(out)
        read.add(inp)
    nodes.extend(extra_nodes)
    for n in extra_nodes:
        read.update(n.input)
        produced.extend(n.output)
    nodes = _toposort(nodes, {"x"} | {i.name for i in inits})
    rank = out_rank or len(x_shape)
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * rank)
               for o in produced if o not in read]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _toposort(nodes, available):
    done, out, pending = set(available), [], list(nodes)
    while pending:
        ready = next(n for n in pending if all(i in done for i in n.input if i))
        pending.remove(ready)
        out.append(ready)
        done.update(ready.output)
    return out


def cut(model, **kw):
    graph = to_graph(model)
    result = cut_kernel_borders(graph, **kw)
    json.dumps(result.stats)  # stats must be JSON-serialisable
    return to_model(graph), result


def check_invariants(model):
    """No negative pads, kernels >= 1, kernel_shape agrees with the weight."""
    weights = conv_weights(model)
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert all(p >= 0 for p in attrs.get("pads", [])), (node.name, attrs["pads"])
        k = list(weights[node.name].shape[2:])
        assert all(d >= 1 for d in k)
        if "kernel_shape" in attrs:
            assert list(attrs["kernel_shape"]) == k


# --- the named cases of the design: 3x3 -> 3x1, 1x3, 2x3, 1x1; 5x5 -> 3x3 -> 1x1 -----------------

@pytest.mark.parametrize("borders, kernel", [
    ([(0, 0), (1, 1)], [3, 1]),
    ([(1, 1), (0, 0)], [1, 3]),
    ([(1, 0), (0, 0)], [2, 3]),
    ([(0, 1), (2, 0)], [2, 1]),
    ([(1, 1), (1, 1)], [1, 1]),
])
def test_3x3_same_padding_cut_to_smaller_kernels(borders, kernel):
    w = dense((8, 4, 3, 3))
    for axis, (lo, hi) in enumerate(borders):
        w = zero_border(w, axis, lo, hi)
    model = conv_model((2, 4, 10, 11), [("c", "x", "y", w, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, "Conv")])
    after, result = cut(model)
    assert result.changed
    assert list(conv_weights(after)["c"].shape) == [8, 4] + kernel
    (entry,) = result.stats["convs"]
    assert entry["kernel_before"] == [3, 3] and entry["kernel_after"] == kernel
    # each cut tap moves one pad cell out of the pads: lo' = 1 - r_lo, hi' = 1 - r_hi; where that
    # goes below 0 (two zero columns on the left of 2x3 -> 2x1) the input is cropped instead
    raw = [1 - borders[0][0], 1 - borders[1][0], 1 - borders[0][1], 1 - borders[1][1]]
    assert entry["pads_after"] == [max(p, 0) for p in raw]
    cropped = [2 + i for i in range(2) if raw[i] < 0 or raw[2 + i] < 0]
    assert entry["cropped_axes"] == cropped
    assert op_counts(after).get("Slice", 0) == (1 if cropped else 0)
    check_invariants(after)
    assert_equivalent(model, after)


def test_5x5_to_3x3_then_1x1_across_two_runs():
    w = zero_border(zero_border(dense((6, 3, 5, 5)), 0, 1, 1), 1, 1, 1)
    model = conv_model((1, 3, 12, 12), [("c", "x", "y", w, {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2]}, "Conv")])
    mid, result = cut(model)
    assert list(conv_weights(mid)["c"].shape[2:]) == [3, 3]
    assert result.stats["convs"][0]["pads_after"] == [1, 1, 1, 1]
    assert_equivalent(model, mid)
    # a later round (after training zeroed more) takes the 3x3 down to 1x1
    ring = next(i for i in mid.graph.initializer if i.name == "c_w")
    w3 = zero_border(zero_border(numpy_helper.to_array(ring), 0, 1, 1), 1, 1, 1)
    ring.CopyFrom(numpy_helper.from_array(w3, ring.name))
    final, result = cut(mid)
    assert list(conv_weights(final)["c"].shape[2:]) == [1, 1]
    assert result.stats["convs"][0]["pads_after"] == [0, 0, 0, 0]
    assert_equivalent(mid, final)
    _, again = cut(final)
    assert not again.changed and again.stats["convs"] == []


def test_nothing_to_cut_is_unchanged():
    model = conv_model((1, 3, 8, 8), [("c", "x", "y", dense((4, 3, 3, 3)), {"pads": [1, 1, 1, 1]}, "Conv")])
    after, result = cut(model)
    assert not result.changed and result.stats == {"convs": [], "refused": []}
    assert list(conv_weights(after)["c"].shape) == [4, 3, 3, 3]


# --- valid padding: the cut crops the input with a Slice ------------------------------------------

def test_valid_conv_mtcnn_like_crops_input_with_slice():
    """MTCNN-style: valid 3x3 convs, PReLU, a pool; the zero top row / right column become crops."""
    w1 = zero_border(zero_border(dense((10, 3, 3, 3)), 0, 1, 0), 1, 0, 1)   # -> 2x2, crop top & right
    w2 = zero_border(zero_border(dense((16, 10, 3, 3)), 0, 1, 1), 1, 1, 1)  # -> 1x1, crop all sides
    slope = numpy_helper.from_array(np.full((10, 1, 1), 0.25, np.float32), "slope")
    extra = [helper.make_node("PRelu", ["a", "slope"], ["p"], name="prelu"),
             helper.make_node("MaxPool", ["p"], ["q"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
    model = conv_model((2, 3, 12, 12), [
        ("c1", "x", "a", w1, {"kernel_shape": [3, 3]}, "Conv"),
        ("c2", "q", "y", w2, {"kernel_shape": [3, 3]}, "Conv"),
    ], extra_nodes=extra, extra_inits=[slope])
    after, result = cut(model)
    assert op_counts(after)["Slice"] == 2
    by_node = {e["node"]: e for e in result.stats["convs"]}
    assert by_node["c1"]["kernel_after"] == [2, 2] and by_node["c1"]["pads_after"] == [0, 0, 0, 0]
    assert by_node["c1"]["cropped_axes"] == [2, 3]
    assert by_node["c2"]["kernel_after"] == [1, 1] and by_node["c2"]["cropped_axes"] == [2, 3]
    check_invariants(after)
    assert_equivalent(model, after)
    # the crop of c1: start 1 on H (top row), end -1 on W (right column)
    inits = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    slice1 = next(n for n in after.graph.node if n.op_type == "Slice" and n.input[0] == "x")
    assert inits[slice1.input[1]].tolist() == [1, 0]
    assert inits[slice1.input[2]].tolist() == [np.iinfo(np.int64).max, -1]
    assert inits[slice1.input[3]].tolist() == [2, 3]


def test_partly_negative_pad_crops_only_what_the_pad_cannot_absorb():
    # pad 1 on each side, 2 zero taps on the left of a 5-wide kernel: lo' = 1 - 2 = -1 -> crop 1
    w = zero_border(dense((4, 2, 1, 5)), 1, 2, 0)
    model = conv_model((1, 2, 6, 9), [("c", "x", "y", w, {"pads": [0, 1, 0, 1]}, "Conv")])
    after, result = cut(model)
    (entry,) = result.stats["convs"]
    assert entry["kernel_after"] == [1, 3] and entry["pads_after"] == [0, 0, 0, 1] and entry["cropped_axes"] == [3]
    assert_equivalent(model, after)


def test_convs_reading_one_tensor_share_identical_crops():
    w_left = zero_border(dense((4, 3, 3, 3)), 1, 1, 0)
    w_other = zero_border(dense((5, 3, 3, 3)), 0, 0, 2)
    model = conv_model((1, 3, 9, 9), [
        ("a", "x", "ya", w_left, {}, "Conv"),
        ("b", "x", "yb", w_left.copy(), {}, "Conv"),
        ("c", "x", "yc", w_other, {}, "Conv"),
        ("d", "x", "yd", dense((2, 3, 3, 3)), {}, "Conv"),  # uncut: keeps reading x itself
    ])
    after, result = cut(model)
    assert op_counts(after)["Slice"] == 2  # one for a and b, one for c
    readers = {n.name: n.input[0] for n in after.graph.node}
    assert readers["a"] == readers["b"] != readers["c"]
    assert readers["d"] == "x"
    assert len(result.stats["convs"]) == 3
    assert_equivalent(model, after)


def test_shared_weight_is_copied_not_edited_under_the_other_reader():
    w = zero_border(dense((4, 3, 3, 3)), 0, 1, 1)
    init = numpy_helper.from_array(w, "shared")
    nodes = [helper.make_node("Conv", ["x", "shared"], ["y1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Identity", ["shared"], ["wcopy"], name="id")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7, 7])],
                              [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [None] * 4),
                               helper.make_tensor_value_info("wcopy", TensorProto.FLOAT, [4, 3, 3, 3])], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    after, _ = cut(model)
    assert list(conv_weights(after)["c1"].shape) == [4, 3, 1, 3]
    assert_equivalent(model, after)  # the Identity still outputs the full 3x3 weight


def test_crop_that_may_empty_the_input_needs_a_known_size():
    # k=3 pads (0, 2): the only non-zero tap is the last one. Cutting to 1x1 crops 2 elements
    # at the start while 2 pad cells stay at the end; with H = 2 the crop would leave nothing.
    w = zero_border(dense((2, 2, 1, 3)), 1, 2, 0)
    attrs = {"pads": [0, 0, 0, 2]}
    for width, cut_to in ((2, 3), (3, 1)):
        model = conv_model((1, 2, 4, width), [("c", "x", "y", w, attrs, "Conv")])
        after, result = cut(model)
        assert list(conv_weights(after)["c"].shape[2:]) == [1, cut_to]
        assert bool(result.stats["refused"]) == (cut_to == 3)
        assert_equivalent(model, after)
    # unknown width: refused with its reason, then proven by input_shapes
    model = conv_model((1, 2, 4, "W"), [("c", "x", "y", w, attrs, "Conv")])
    _, result = cut(model)
    assert not result.changed and "give input shapes" in result.stats["refused"][0]["reason"]
    after, result = cut(model, input_shapes={"x": [1, 2, 4, 5]})
    assert list(conv_weights(after)["c"].shape[2:]) == [1, 1]
    assert_equivalent(model, after, shapes={"x": [1, 2, 4, 5]})


def test_one_sided_crop_with_symbolic_size_is_proven_by_validity():
    # valid 3x3 with a zero top row and pad 1 at the bottom: H >= 2 is implied, crop 1 fits
    w = zero_border(dense((3, 2, 3, 3)), 0, 1, 0)
    model = conv_model((1, 2, "H", "W"), [("c", "x", "y", w, {"pads": [0, 0, 1, 0]}, "Conv")])
    after, result = cut(model)
    assert result.stats["convs"][0]["cropped_axes"] == [2] and result.stats["refused"] == []
    assert_equivalent(model, after, shapes={"x": [1, 2, 2, 5]})
    assert_equivalent(model, after, shapes={"x": [1, 2, 9, 4]})


# --- stride, dilation, groups, 1-D / 3-D --------------------------------------------------------

@pytest.mark.parametrize("stride, dilation", [(2, 1), (3, 1), (2, 2), (1, 3), (3, 2)])
def test_stride_and_dilation_keep_sampled_positions(stride, dilation):
    w = zero_border(zero_border(dense((4, 3, 5, 4)), 0, 2, 1), 1, 1, 2)
    for pads in ([0, 0, 0, 0], [3, 1, 2, 4]):
        attrs = {"strides": [stride, stride], "dilations": [dilation, dilation], "pads": pads}
        model = conv_model((1, 3, 23, 20), [("c", "x", "y", w, attrs, "Conv")])
        after, result = cut(model)
        assert list(conv_weights(after)["c"].shape[2:]) == [2, 1]
        assert result.stats["convs"][0]["pads_after"] == [
            max(0, pads[0] - 2 * dilation), max(0, pads[1] - dilation),
            max(0, pads[2] - dilation), max(0, pads[3] - 2 * dilation)]
        assert_equivalent(model, after)


@pytest.mark.parametrize("group, cin, cout", [(2, 4, 6), (4, 4, 4), (4, 4, 8)])  # grouped, depthwise, x2
def test_grouped_and_depthwise(group, cin, cout):
    # one group has the right column non-zero: the profile spans all filters, so it is kept
    w = zero_border(dense((cout, cin // group, 3, 3)), 0, 1, 0)
    model = conv_model((1, cin, 8, 8), [("c", "x", "y", w, {"group": group, "pads": [1, 1, 1, 1]}, "Conv")])
    after, _ = cut(model)
    assert list(conv_weights(after)["c"].shape) == [cout, cin // group, 2, 3]
    assert_equivalent(model, after)


def test_zero_in_only_some_filters_is_not_a_border():
    w = dense((4, 3, 3, 3))
    w[:3, :, :, 0] = 0  # filter 3 still reads the left column
    model = conv_model((1, 3, 6, 6), [("c", "x", "y", w, {"pads": [1, 1, 1, 1]}, "Conv")])
    _, result = cut(model)
    assert not result.changed


def test_conv1d_and_conv3d():
    w1 = zero_border(dense((4, 2, 7)), 0, 3, 2)
    m1 = conv_model((2, 2, 20), [("c", "x", "y", w1, {"pads": [3, 3]}, "Conv")])
    a1, _ = cut(m1)
    assert list(conv_weights(a1)["c"].shape) == [4, 2, 2]
    assert_equivalent(m1, a1)
    w3 = zero_border(zero_border(dense((3, 2, 3, 3, 3)), 0, 1, 1), 2, 0, 2)
    m3 = conv_model((1, 2, 5, 6, 7), [("c", "x", "y", w3, {"pads": [1, 1, 1, 1, 1, 1]}, "Conv")])
    a3, _ = cut(m3)
    assert list(conv_weights(a3)["c"].shape) == [3, 2, 1, 3, 1]
    assert_equivalent(m3, a3)


@pytest.mark.parametrize("opset", list(range(9, 23)))
def test_opsets(opset):
    w = zero_border(zero_border(dense((4, 3, 3, 3)), 0, 1, 0), 1, 0, 1)
    model = conv_model((1, 3, 8, 8), [("c", "x", "y", w, {"kernel_shape": [3, 3]}, "Conv")], opset=opset)
    after, _ = cut(model)
    assert after.opset_import[0].version == opset
    assert op_counts(after)["Slice"] == 1
    assert list(conv_weights(after)["c"].shape[2:]) == [2, 2]
    assert_equivalent(model, after)


# --- refusals, each with its reason ------------------------------------------------------------

def test_entirely_zero_kernel_is_left_with_reason():
    model = conv_model((1, 3, 6, 6), [("c", "x", "y", np.zeros((4, 3, 3, 3), np.float32), {"pads": [1] * 4}, "Conv")])
    after, result = cut(model)
    assert not result.changed and list(conv_weights(after)["c"].shape[2:]) == [3, 3]
    assert result.stats["refused"] == [{"node": "c", "reason": "kernel is entirely zero; left for the channel "
                                                                "passes to remove"}]


def test_auto_pad_refused_until_explicit_pads_ran():
    w = zero_border(dense((4, 3, 3, 3)), 1, 1, 1)
    model = conv_model((1, 3, 8, 8), [("c", "x", "y", w, {"auto_pad": "SAME_UPPER"}, "Conv")])
    graph = to_graph(model)
    result = cut_kernel_borders(graph)
    assert not result.changed
    assert "run explicit_pads first" in result.stats["refused"][0]["reason"]
    assert explicit_pads(graph).changed
    result = cut_kernel_borders(graph)
    assert result.stats["convs"][0]["kernel_after"] == [3, 1]
    assert_equivalent(model, to_model(graph))


def test_weight_not_constant_refused():
    nodes = [helper.make_node("Relu", ["w_in"], ["w"], name="relu"),
             helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5]),
                                           helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [4, 3, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)])
    _, result = cut(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert result.stats["refused"] == [{"node": "c", "reason": "weight not constant"}]


def test_negative_pads_on_input_are_a_contract_error():
    model = conv_model((1, 3, 6, 6), [("c", "x", "y", dense((4, 3, 3, 3)), {"pads": [1, -1, 1, 1]}, "Conv")])
    with pytest.raises(PassError, match="cut_kernel_borders.*'c'.*negative pads"):
        cut_kernel_borders(to_graph(model))


# --- ConvTranspose: same arithmetic on output-side pads, never negative ---------------------------

def test_conv_transpose_cut_into_pads():
    # k=4, s=2, p=1 (a GAN/UNet upsampler): a zero first row and last column cut into the pads
    w = zero_border(zero_border(dense((4, 3, 4, 4)), 0, 1, 0), 1, 0, 1)
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    model = conv_model((1, 4, 5, 6), [("t", "x", "y", w, attrs, "ConvTranspose")])
    after, result = cut(model)
    assert list(conv_weights(after)["t"].shape) == [4, 3, 3, 3]
    assert result.stats["convs"][0]["pads_after"] == [0, 1, 1, 0]
    assert result.stats["refused"] == []
    assert_equivalent(model, after)


def test_conv_transpose_keeps_taps_that_would_need_negative_pads():
    w = zero_border(dense((4, 3, 3, 3)), 1, 2, 0)  # two zero leading columns, pad 1
    attrs = {"strides": [2, 2], "pads": [0, 1, 0, 0]}
    model = conv_model((1, 4, 5, 5), [("t", "x", "y", w, attrs, "ConvTranspose")])
    after, result = cut(model)
    assert list(conv_weights(after)["t"].shape[2:]) == [3, 2]  # one of the two cut
    assert result.stats["convs"][0]["pads_after"] == [0, 0, 0, 0]
    (refusal,) = result.stats["refused"]
    assert refusal["node"] == "t" and "negative pads" in refusal["reason"]
    assert_equivalent(model, after)


# --- property tests -------------------------------------------------------------------------------

@st.composite
def conv_cases(draw, transpose=False):
    n = draw(st.sampled_from([1, 2, 3]))
    kmax = {1: 7, 2: 5, 3: 3}[n]
    axes = []
    for _ in range(n):
        k = draw(st.integers(1, kmax))
        lo = draw(st.integers(0, k - 1))  # an all-zero kernel has its own test
        hi = draw(st.integers(0, k - 1 - lo))
        stride = draw(st.integers(1, 3))
        axes.append(dict(k=k, s=stride, d=draw(st.integers(1, 3)), adj=draw(st.integers(0, stride - 1)),
                         plo=draw(st.integers(0, k)), phi=draw(st.integers(0, k)), rlo=lo, rhi=hi,
                         extra=draw(st.integers(0, 3))))
    groups = draw(st.sampled_from(["one", "two", "depthwise"]))
    g, cin, cout = {"one": (1, 2, 3), "two": (2, 4, 2), "depthwise": (3, 3, 3)}[groups]
    return n, axes, g, cin, cout, draw(st.integers(0, 2**31 - 1)), draw(st.booleans())


def _build_case(case, transpose):
    n, axes, g, cin, cout, seed, sparse = case
    rng = np.random.default_rng(seed)
    ks = [a["k"] for a in axes]
    wshape = (cin, cout // g, *ks) if transpose else (cout, cin // g, *ks)
    w = dense(wshape, rng)
    if sparse:  # random interior zeros that never empty a whole slice
        w *= rng.random(wshape) < 0.5
        for i, a in enumerate(axes):
            for j in (a["rlo"], a["k"] - 1 - a["rhi"]):
                if 0 <= j < a["k"]:
                    # the guard's other coordinates lie inside their own kept range, so the
                    # other axes' border zeroing below cannot erase it
                    idx = [0, 0] + [rng.integers(b["rlo"], b["k"] - b["rhi"]) for b in axes]
                    idx[2 + i] = j
                    w[tuple(idx)] = 1.0
    for i, a in enumerate(axes):
        w = zero_border(w, i, a["rlo"], a["rhi"])
    sizes = []
    for a in axes:
        dk = a["d"] * (a["k"] - 1) + 1
        sizes.append(max(1, dk - a["plo"] - a["phi"]) + a["extra"] if not transpose else 1 + a["extra"])
    attrs = {"strides": [a["s"] for a in axes], "dilations": [a["d"] for a in axes],
             "pads": [a["plo"] for a in axes] + [a["phi"] for a in axes], "group": g, "kernel_shape": ks}
    if transpose:
        for i, a in enumerate(axes):  # the ConvTranspose output must keep >= 1 position
            full = (sizes[i] - 1) * a["s"] + a["d"] * (a["k"] - 1) + 1
            a["plo"] = min(a["plo"], full - 1)
            a["phi"] = min(a["phi"], full - 1 - a["plo"])
        attrs["pads"] = [a["plo"] for a in axes] + [a["phi"] for a in axes]
        attrs["output_padding"] = [a["adj"] for a in axes]
    for a, h in zip(axes, sizes):
        a["h"] = h
    model = conv_model((2, cin, *sizes), [("c", "x", "y", w, attrs, "ConvTranspose" if transpose else "Conv")])
    return model, w, axes


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
def test_property_conv_cut_is_exact_and_optimal(case):
    model, w, axes = _build_case(case, transpose=False)
    after, result = cut(model)
    want = expected_kernel(w)
    # the constructed border zeros are exactly the zero borders...
    assert want == [a["k"] - a["rlo"] - a["rhi"] for a in axes]
    # ...and all of them are cut, except where the crop would not leave one input element
    # (the non-zero taps then only ever read padding): that axis is cut only into its pads
    fits = []
    for a in axes:
        c_lo, c_hi = max(0, a["d"] * a["rlo"] - a["plo"]), max(0, a["d"] * a["rhi"] - a["phi"])
        fits.append(a["h"] - c_lo - c_hi >= 1)
    want = [a["k"] - a["rlo"] - a["rhi"] if ok else
            a["k"] - min(a["rlo"], a["plo"] // a["d"]) - min(a["rhi"], a["phi"] // a["d"])
            for a, ok in zip(axes, fits)]
    assert list(conv_weights(after)["c"].shape[2:]) == want
    assert bool(result.stats["refused"]) == (not all(fits))
    assert result.changed == (want != [a["k"] for a in axes])
    cropped = {2 + i for i, a in enumerate(axes)
               if fits[i] and (a["plo"] < a["d"] * a["rlo"] or a["phi"] < a["d"] * a["rhi"])}
    assert op_counts(after).get("Slice", 0) == (1 if cropped else 0)
    event(f"dims={len(axes)} cut={result.changed} cropped={bool(cropped)} fits={all(fits)}")
    if result.changed:
        assert set(result.stats["convs"][0]["cropped_axes"]) == cropped
    check_invariants(after)
    assert_equivalent(model, after, seeds=(0,))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
def test_property_conv_transpose_cut_is_exact(case):
    model, w, axes = _build_case(case, transpose=True)
    after, result = cut(model)
    pads = {a.name: helper.get_attribute_value(a) for a in model.graph.node[0].attribute}["pads"]
    n = len(axes)
    want = [a["k"] - min(a["rlo"], pads[i] // a["d"]) - min(a["rhi"], pads[n + i] // a["d"])
            for i, a in enumerate(axes)]
    assert list(conv_weights(after)["c"].shape[2:]) == want
    event(f"dims={n} cut={result.changed} partial={bool(result.stats['refused'])}")
    assert "Slice" not in op_counts(after)
    check_invariants(after)
    assert_equivalent(model, after, seeds=(0,))


# --- real graphs: every zoo export (both exporters) and PP-OCR, borders zeroed at random ---------

def _zero_random_borders(graph, seed):
    """Zero a random leading/trailing slice per spatial axis of every conv; return the weights."""
    rng = np.random.default_rng(seed)
    zeroed = {}
    for node in graph.nodes:
        if node.op not in ("Conv", "ConvTranspose") or not isinstance(node.inputs[1], gs.Constant):
            continue
        w = np.array(node.inputs[1].values)
        for axis, k in enumerate(w.shape[2:]):
            lo = int(rng.integers(0, 2)) if k > 1 else 0
            hi = int(rng.integers(0, 2)) if k - lo > 1 else 0
            w = zero_border(w, axis, lo, hi)
        node.inputs[1].values = w
        zeroed[node.name] = w
    return zeroed


def _expected_after_cut(graph_before_attrs, name, w):
    op, pads, dil = graph_before_attrs[name]
    if op == "Conv":
        return expected_kernel(w)
    n = w.ndim - 2
    out = []
    for i in range(n):  # ConvTranspose cuts only what its pads absorb
        ax = 2 + i
        k = w.shape[ax]
        zero = [not np.any(np.take(w, j, axis=ax)) for j in range(k)]
        lo = next(j for j in range(k) if not zero[j])
        hi = next(j for j in range(k) if not zero[k - 1 - j])
        out.append(k - min(lo, pads[i] // dil[i]) - min(hi, pads[n + i] // dil[i]))
    return out


def _check_real(model, shape, seed=0):
    from smof_onnx.passes.pipeline import canonicalize
    name = model.graph.input[0].name
    shapes = {name: list(shape)}
    graph = canonicalize(to_graph(model), shapes).graph
    zeroed = _zero_random_borders(graph, seed)
    assert zeroed, "no conv with constant weights found"
    before = to_model(graph)
    attrs = {n.name: (n.op, [int(p) for p in n.attrs.get("pads", [0] * 2 * (len(zeroed[n.name].shape) - 2))],
                      [int(d) for d in n.attrs.get("dilations", [1] * (len(zeroed[n.name].shape) - 2))])
             for n in graph.nodes if n.name in zeroed}
    result = cut_kernel_borders(graph, shapes)
    json.dumps(result.stats)
    after = to_model(graph)
    assert result.changed
    got = conv_weights(after)
    for conv, w in zeroed.items():
        assert list(got[conv].shape[2:]) == _expected_after_cut(attrs, conv, w), conv
    for refusal in result.stats["refused"]:  # the only refusal zeroed borders can cause
        assert refusal["reason"].startswith("ConvTranspose axis"), refusal
    check_invariants(after)
    assert_equivalent(before, after, shapes=shapes, seeds=(0,))


def test_zoo_models(zoo_model):
    name, exporter, model, shape = zoo_model
    _check_real(model, shape, seed=len(name))


def test_ppocr_models(ppocr_model):
    kind, model, shape = ppocr_model
    _check_real(model, shape)
