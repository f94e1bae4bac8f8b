"""Specification of passes.cut_dead_channels: exact (ORT before/after), valid, and optimal cuts."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from smof_onnx.passes.cut_dead_channels import cut_dead_channels
from smof_onnx.passes.graph import to_graph, to_model
from tests.helpers import assert_equivalent, conv_weights, initializer, op_counts
from tests.test_analysis_channels import Net


def cut_once(model: onnx.ModelProto, shapes=None) -> tuple[onnx.ModelProto, dict]:
    """Cut, check the result is exact and valid, and that a second cut finds nothing more."""
    res = cut_dead_channels(to_graph(model), shapes)
    out = to_model(res.graph)
    assert_equivalent(model, out, shapes)
    return out, res.stats


def cut(model: onnx.ModelProto, shapes=None) -> tuple[onnx.ModelProto, dict]:
    """:func:`cut_once`, plus: a second cut finds nothing more (one pass reaches the optimum)."""
    out, stats = cut_once(model, shapes)
    again = cut_dead_channels(to_graph(out), shapes)
    assert not again.changed, again.stats["removed"]
    return out, stats


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def w(model, name, i=1):
    return initializer(model, node(model, name).input[i])


def test_plain_chain_drops_zero_filters_and_unread_inputs():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.op("Relu", [n.conv(x, 3, 8, zero_out=(1, 6), name="c1")])
    b = n.op("Relu", [n.conv(a, 8, 6, zero_in=(3,), name="c2")])
    y = n.conv(b, 6, 4, name="c3")
    m, stats = cut(n.model(y))
    ws = conv_weights(m)
    assert ws["c1"].shape == (5, 3, 3, 3) and ws["c2"].shape == (6, 5, 3, 3) and ws["c3"].shape == (4, 6, 3, 3)
    assert initializer(m, node(m, "c1").input[2]).shape == (5,)
    assert stats["slots_removed"] == 3
    assert {r["tensor"]: (r["before"], r["after"]) for r in stats["removed"]}[a] == (8, 5)


def test_cascade_filter_reading_only_removed_channels_and_unused_after_removed_consumer():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.op("Relu", [n.conv(x, 3, 4, zero_out=(0,), name="c1")])
    w2 = n.weight((5, 4, 3, 3))
    w2[2, 1:] = 0          # filter 2 reads only channel 0, which is zero; bias 0 -> zero
    b2 = n.rng.standard_normal(5).astype(np.float32)
    b2[2] = 0
    w2[:, 3] = 0
    w2[4, 3] = 1.0         # channel 3 is read only by filter 4 ...
    w3 = n.weight((2, 5, 3, 3))
    w3[:, 4] = 0           # ... whose output nobody reads: channel 3 goes too
    b = n.op("Relu", [n.op("Conv", [a, n.const(w2), n.const(b2)], name="c2", pads=[1] * 4)])
    y = n.op("Conv", [b, n.const(w3)], name="c3", pads=[1] * 4)
    m, _ = cut(n.model(y))
    ws = conv_weights(m)
    assert ws["c1"].shape[0] == 2 and ws["c2"].shape == (3, 2, 3, 3) and ws["c3"].shape == (2, 3, 3, 3)


def residual(zero_stem=(), zero_branch=(), zero_head_in=(), zero_branch_in=()):
    n = Net()
    x = n.input(["N", 3, 8, 8])
    s = n.conv(x, 3, 6, zero_out=zero_stem, name="stem")
    h = n.op("Relu", [n.conv(s, 6, 5, zero_in=zero_branch_in, name="b1")])
    b = n.conv(h, 5, 6, zero_out=zero_branch, name="b2")
    t = n.op("Add", [s, b])
    y = n.conv(t, 6, 2, zero_in=zero_head_in, name="head")
    return n.model(y)


def test_residual_slot_goes_only_when_zero_or_unused_in_every_member():
    m, stats = cut(residual(zero_stem=(1, 2), zero_branch=(2, 4)))
    ws = conv_weights(m)
    assert ws["stem"].shape[0] == 5 and ws["b2"].shape[0] == 5 and ws["head"].shape[1] == 5
    assert ws["b1"].shape[1] == 5
    # unused across the group: head and branch input both ignore channel 3
    m, _ = cut(residual(zero_head_in=(3, 5), zero_branch_in=(3,)))
    ws = conv_weights(m)
    assert ws["stem"].shape[0] == 5 and ws["b2"].shape[0] == 5 and ws["head"].shape[1] == 5


def test_yolo_c2f_concat_offsets_and_split_sizes():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.op("Relu", [n.conv(x, 3, 8, zero_out=(1, 5, 6), name="cv1")])
    s0, s1 = n.op("Split", [a, n.const(np.array([4, 4], np.int64))], n_out=2, name="split", axis=1)
    m1 = n.op("Relu", [n.conv(s1, 4, 4, zero_out=(0,), name="m")])
    c = n.op("Concat", [s0, s1, m1], name="cat", axis=1)
    y = n.conv(c, 12, 3, k=1, name="cv2")
    m, stats = cut(n.model(y))
    ws = conv_weights(m)
    # split halves: [0,1,2,3] minus {1}; [4..7] minus {5,6}; m minus {0}
    assert initializer(m, node(m, "split").input[1]).tolist() == [3, 2]
    assert ws["cv1"].shape[0] == 5 and ws["m"].shape == (3, 2, 3, 3) and ws["cv2"].shape[1] == 8


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_sizes_across_opsets_and_implicit_equal_split(opset):
    n = Net(opset=opset)
    x = n.input(["N", 3, 8, 8])
    a = n.conv(x, 3, 6, zero_out=(0, 4), name="c")
    extra = {"num_outputs": 2} if opset >= 18 else {}
    p, q = n.op("Split", [a], n_out=2, name="split", axis=1, **extra)
    y = n.op("Add", [n.conv(p, 3, 2, name="hp"), n.conv(q, 3, 2, name="hq")])
    m, _ = cut(n.model(y))
    sp = node(m, "split")
    sizes = list(helper.get_attribute_value(next(a for a in sp.attribute if a.name == "split"))) \
        if opset < 13 else initializer(m, sp.input[1]).tolist()
    assert sizes == [2, 2]
    assert not any(a.name == "num_outputs" for a in sp.attribute)


@pytest.mark.parametrize("mult", [1, 2])
@pytest.mark.parametrize("k_last", [1, 3])
def test_depthwise_couples_input_and_output_and_shrinks_group(mult, k_last):
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.op("Relu", [n.conv(x, 3, 4, zero_out=(1, 2), name="pw1")])
    dw_out = tuple(range(mult)) + tuple(range(2 * mult, 3 * mult))  # groups 0 and 2 have zero bias+weights
    d = n.op("Relu", [n.conv(a, 4, 4 * mult, group=4, zero_out=dw_out[mult:], name="dw")])
    y = n.conv(d, 4 * mult, 3, k=k_last, name="pw2")
    m, stats = cut(n.model(y))
    ws = conv_weights(m)
    # group 2: input 2 zero and its dw filters (and bias) zero -> removed;
    # group 1: input 1 zero but its dw bias is not, so its outputs are constants relu(bias): a 1x1 pw2
    # folds them into its bias (removed), a padded 3x3 pw2 cannot (kept, with the reason)
    kept = 3 if k_last == 3 else 2
    assert ws["pw1"].shape[0] == kept
    assert ws["dw"].shape == (kept * mult, 1, 3, 3)
    assert helper.get_attribute_value(next(a for a in node(m, "dw").attribute if a.name == "group")) == kept
    assert ws["pw2"].shape[1] == kept * mult
    if k_last == 3:
        assert any("is padded" in r["reason"] and "Conv 'pw2'" in r["reason"] for r in stats["constants_kept"])


def test_grouped_conv_loses_only_whole_groups():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.conv(x, 3, 8, zero_out=(0, 1, 2, 3, 4), name="c1")    # group 0 (0..3) fully zero, group 1 partly
    g = n.conv(a, 8, 4, group=2, zero_out=(0, 1), name="g")     # outputs of group 0 zero too
    y = n.conv(g, 4, 2, name="h")
    m, _ = cut_once(n.model(y))
    ws = conv_weights(m)
    assert ws["c1"].shape[0] == 4 and ws["g"].shape == (2, 4, 3, 3) and ws["h"].shape[1] == 2
    assert helper.get_attribute_value(next(a for a in node(m, "g").attribute if a.name == "group")) == 1
    # with one group left the conv is dense: the zero channel 4 can now go on its own (next round)
    m, _ = cut(m)
    assert conv_weights(m)["c1"].shape[0] == 3 and conv_weights(m)["g"].shape == (2, 3, 3, 3)


def test_se_block_gate_branch_goes_with_its_channel():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    f = n.op("Relu", [n.conv(x, 3, 8, zero_out=(3, 6), name="feat")])
    p = n.op("GlobalAveragePool", [f])
    h = n.op("Relu", [n.conv(p, 8, 2, k=1, name="se1")])
    gate = n.op("Sigmoid", [n.conv(h, 2, 8, k=1, name="se2")])
    y = n.conv(n.op("Mul", [f, gate]), 8, 3, name="head")
    m, _ = cut(n.model(y))
    ws = conv_weights(m)
    assert ws["feat"].shape[0] == 6 and ws["se1"].shape[1] == 6 and ws["se2"].shape[0] == 6
    assert ws["head"].shape[1] == 6


def test_prelu_slopes_and_per_channel_constants_are_dropped():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.conv(x, 3, 5, zero_out=(2,), name="c")
    pr = n.op("PRelu", [a, n.const(n.rng.uniform(0.1, 0.3, (5, 1, 1)).astype(np.float32))], name="prelu")
    mul = n.op("Mul", [pr, n.const(n.rng.standard_normal((1, 5, 1, 1)).astype(np.float32))], name="mul")
    y = n.conv(mul, 5, 2, name="h")
    m, _ = cut(n.model(y))
    assert initializer(m, node(m, "prelu").input[1]).shape == (4, 1, 1)
    assert initializer(m, node(m, "mul").input[1]).shape == (1, 4, 1, 1)
    assert conv_weights(m)["h"].shape[1] == 4


def test_add_of_a_non_zero_constant_keeps_the_channel_unless_unused():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.conv(x, 3, 4, zero_out=(1,), name="c")
    shift = np.ones((1, 4, 1, 1), np.float32)
    y = n.conv(n.op("Add", [a, n.const(shift)], name="add"), 4, 2, zero_in=(2,), name="h")
    m, _ = cut(n.model(y))
    assert conv_weights(m)["c"].shape[0] == 3            # channel 1 is 0 + 1: kept; channel 2 unused: gone
    assert initializer(m, node(m, "add").input[1]).shape == (1, 3, 1, 1)


@pytest.mark.parametrize("lo,removable", [(0.0, True), (1.0, False)])
def test_clip_preserves_zero_only_when_range_holds_zero(lo, removable):
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.conv(x, 3, 4, zero_out=(0,), name="c")
    cl = n.op("Clip", [a, n.const(np.float32(lo)), n.const(np.float32(6.0))])
    y = n.conv(cl, 4, 2, name="h")
    m, _ = cut(n.model(y))
    assert conv_weights(m)["c"].shape[0] == (3 if removable else 4)


def test_paddle_hard_swish_and_softplus():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.conv(x, 3, 4, zero_out=(0,), name="c")
    hs = n.op("Div", [n.op("Mul", [a, n.op("Clip", [n.op("Add", [a, n.const(np.float32(3))]),
                                                    n.const(np.float32(0)), n.const(np.float32(6))])]),
                      n.const(np.float32(6))])
    sp = n.op("Softplus", [n.conv(x, 3, 4, zero_out=(1,), name="d")])
    y = n.conv(n.op("Concat", [hs, sp], axis=1), 8, 2, name="h")
    m, _ = cut(n.model(y))
    ws = conv_weights(m)
    assert ws["c"].shape[0] == 3 and ws["d"].shape[0] == 4 and ws["h"].shape[1] == 7


def test_flatten_gemm_drops_feature_blocks():
    n = Net()
    x = n.input(["N", 3, 4, 4])
    a = n.op("Relu", [n.conv(x, 3, 4, zero_out=(1,), name="c")])
    f = n.op("Flatten", [a], axis=1)
    g = n.op("Relu", [n.gemm(f, 64, 10, zero_out=(7,), name="fc1")])
    y = n.gemm(g, 10, 3, name="fc2")
    m, _ = cut(n.model(y))
    b1 = w(m, "fc1")
    assert b1.shape == (9, 48) and w(m, "fc2").shape == (3, 9)
    orig = initializer(n.model(y), node(n.model(y), "fc1").input[1])
    keep_rows = [r for r in range(10) if r != 7]
    keep_cols = [c for c in range(64) if not 16 <= c < 32]
    np.testing.assert_array_equal(b1, orig[np.ix_(keep_rows, keep_cols)])


@pytest.mark.parametrize("static_in_model", [True, False])
def test_mtcnn_transpose_flatten_gemm_mapping_is_exact(static_in_model):
    n = Net()
    x = n.input([1, 3, 6, 5] if static_in_model else ["N", 3, 6, 5])
    a = n.op("PRelu", [n.conv(x, 3, 4, zero_out=(2,), name="c", pads=[0] * 4),
                       n.const(np.full((4, 1, 1), 0.25, np.float32))])
    t = n.op("Transpose", [a], perm=[0, 3, 2, 1])                  # [N, 3, 4, 4]: features f % 4 == channel
    y = n.gemm(n.op("Flatten", [t], axis=1), 48, 5, name="fc")
    model = n.model(y)
    shapes = None if static_in_model else {"x": [1, 3, 6, 5]}
    m, _ = cut(model, shapes)
    orig = initializer(model, node(model, "fc").input[1])
    np.testing.assert_array_equal(w(m, "fc"), orig[:, [f for f in range(48) if f % 4 != 2]])


def test_reshape_and_matmul_feature_blocks():
    n = Net()
    x = n.input(["N", 3, 4, 4])
    a = n.op("Relu", [n.conv(x, 3, 4, zero_out=(3,), name="c")])
    r = n.op("Reshape", [a, n.const(np.array([-1, 64], np.int64))], name="reshape")
    y = n.op("MatMul", [r, n.const(n.weight((64, 6)))], name="mm")
    m, _ = cut(n.model(y))
    assert w(m, "mm").shape == (48, 6)
    assert initializer(m, node(m, "reshape").input[1]).tolist() == [-1, 48]
    n2 = Net()
    x = n2.input(["N", 3, 4, 4])
    a = n2.op("Relu", [n2.conv(x, 3, 4, zero_out=(0,), name="c")])
    r = n2.op("Reshape", [a, n2.const(np.array([0, 64], np.int64))], name="reshape")
    y = n2.op("MatMul", [r, n2.const(n2.weight((64, 6)))], name="mm")
    m, _ = cut(n2.model(y))
    assert initializer(m, node(m, "reshape").input[1]).tolist() == [0, 48]


def test_slice_on_channels_rewrites_starts_and_ends():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.conv(x, 3, 8, zero_out=(3,), name="c")
    s = n.op("Slice", [a, *(n.const(np.array([v], np.int64)) for v in (2, 6, 1))], name="slice")
    y = n.conv(s, 4, 2, name="h")
    m, _ = cut(n.model(y))
    sl = node(m, "slice")
    # channels 0, 1, 6, 7 are never read and go; 3 is zero and goes: 3 left, [2, 4, 5] -> new [0:3)
    assert conv_weights(m)["c"].shape[0] == 3
    assert initializer(m, sl.input[1]).tolist() == [0] and initializer(m, sl.input[2]).tolist() == [3]


def test_unfolded_batchnorm_after_add_zeroed_entry_removes_the_whole_slot():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.conv(x, 3, 6, name="c1")
    b = n.conv(x, 3, 6, name="c2")
    bn = n.bn(n.op("Add", [a, b]), 6, zero=(4,), name="bn")
    y = n.conv(n.op("Relu", [bn]), 6, 2, name="h")
    m, _ = cut(n.model(y))
    ws = conv_weights(m)
    assert ws["c1"].shape[0] == ws["c2"].shape[0] == 5 and ws["h"].shape[1] == 5
    assert all(initializer(m, i).shape == (5,) for i in node(m, "bn").input[1:])


def test_convtranspose_producer_and_consumer():
    n = Net()
    x = n.input(["N", 3, 4, 4])
    a = n.op("Relu", [n.conv(x, 3, 4, zero_out=(0,), name="c")])
    wt = n.weight((4, 5, 2, 2))
    wt[:, 2] = 0
    bt = n.rng.standard_normal(5).astype(np.float32)
    bt[2] = 0
    u = n.op("Relu", [n.op("ConvTranspose", [a, n.const(wt), n.const(bt)], name="up", strides=[2, 2])])
    y = n.conv(u, 5, 2, name="h")
    m, _ = cut(n.model(y))
    assert w(m, "up").shape == (3, 4, 2, 2) and conv_weights(m)["h"].shape[1] == 4


def test_graph_output_channels_are_never_cut():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.conv(x, 3, 4, zero_out=(1,), name="c")
    m, stats = cut(n.model(a))
    assert conv_weights(m)["c"].shape[0] == 4
    assert any(f["where"].startswith("graph output") for f in stats["frozen"])


def test_unsupported_op_freezes_its_group_and_the_rest_is_cut():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    a = n.op("Relu", [n.conv(x, 3, 6, zero_out=(0,), name="ca")])
    b = n.op("DepthToSpace", [a], name="d2s", blocksize=1)
    c = n.op("Relu", [n.conv(b, 6, 5, zero_out=(3,), name="cb")])
    y = n.conv(c, 5, 2, name="h")
    m, stats = cut(n.model(y))
    ws = conv_weights(m)
    assert ws["ca"].shape[0] == 6 and ws["cb"].shape[0] == 4
    assert any(f["where"] == "d2s (DepthToSpace)" for f in stats["frozen"])


def test_what_only_a_dead_refused_node_reads_is_cut_and_the_slot_it_froze_stays():
    """The head reads nothing, so Shape and the runtime Reshape (both frozen) are not live: the
    channels behind them go, the tensor they read keeps its channels (they would be edited)."""
    from tests.test_analysis_facts import runtime_flatten_head
    model, _, _ = runtime_flatten_head(head_zero=True)
    m, stats = cut(model, {"x": [1, 3, 4, 4]})
    ws = conv_weights(m)
    assert ws["c1"].shape[0] == 1 and ws["a"].shape[:2] == (4, 1)
    assert {"shape (Shape)", "flatten (Reshape)"} <= {f["where"] for f in stats["frozen"]}


def test_the_pipeline_cuts_a_group_once_the_dead_node_that_froze_it_is_gone():
    """Round 1 drops the zero branch; the DepthToSpace (no rule) that froze u is then dead, and
    eliminate_dead_nodes removes it; round 2 sees u unfrozen and cuts its zero channels."""
    from smof_onnx.passes import pipeline
    n = Net()
    x = n.input([1, 3, 4, 4])
    u = n.op("Relu", [n.conv(x, 3, 6, zero_out=(2, 3, 4, 5), name="c1")])
    main = n.conv(u, 6, 4, name="m")
    r = n.op("DepthToSpace", [n.op("Relu", [u])], name="d2s", blocksize=1)
    zw = np.zeros((4, 6, 3, 3), np.float32)
    side = n.op("Conv", [r, n.const(zw)], name="z", pads=[1] * 4)
    y = n.op("Add", [main, side])
    model = n.model(y, shapes={y: [1, 4, 4, 4]})
    shapes = {"x": [1, 3, 4, 4]}
    res = pipeline.cut(to_graph(model), shapes)
    out = to_model(res.graph)
    assert_equivalent(model, out, shapes)
    ws = conv_weights(out)
    assert ws["c1"].shape[0] == 2 and ws["m"].shape[1] == 2
    assert "DepthToSpace" not in op_counts(out)
    assert any(f["where"] == "d2s (DepthToSpace)" for f in res.frozen())   # round 1 saw the freeze
    assert res.rounds >= 2


def test_a_tensor_keeps_one_channel_when_every_slot_is_removable():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    s = n.conv(x, 3, 4, name="stem")
    z = n.op("Relu", [n.conv(x, 3, 3, zero_out=(0, 1, 2), name="dead")])
    y = n.op("Add", [s, n.conv(z, 3, 4, name="h")])
    m, _ = cut(n.model(y))
    assert conv_weights(m)["dead"].shape[0] == 1 and conv_weights(m)["h"].shape[1] == 1


def test_resize_and_pad_are_identity_on_channels():
    n = Net()
    x = n.input(["N", 3, 4, 4])
    a = n.conv(x, 3, 4, zero_out=(2,), name="c")
    r = n.op("Resize", [a, "", n.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    p = n.op("Pad", [r, n.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], mode="reflect")
    y = n.conv(n.op("MaxPool", [p], kernel_shape=[2, 2], strides=[2, 2]), 4, 2, name="h")
    m, _ = cut(n.model(y))
    assert conv_weights(m)["c"].shape[0] == 3 and conv_weights(m)["h"].shape[1] == 3
    assert op_counts(m)["Resize"] == 1


def test_nothing_to_cut_reports_unchanged():
    n = Net()
    x = n.input(["N", 3, 8, 8])
    y = n.conv(n.op("Relu", [n.conv(x, 3, 4, name="a")]), 4, 2, name="b")
    res = cut_dead_channels(to_graph(n.model(y)))
    assert not res.changed and res.stats["removed"] == [] and res.stats["slots_removed"] == 0


# --- property tests: random chains, expected structure computed independently -------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


ACT = {"Relu": lambda x: np.maximum(x, np.float32(0)),
       "LeakyRelu": lambda x: np.where(x < 0, np.float32(0.01) * x, x),
       "Sigmoid": lambda x: np.float32(1) / (np.float32(1) + np.exp(-x)),
       "Softplus": lambda x: np.log1p(np.exp(x))}


def expected_chain(weights, biases, acts):
    """Channels kept between conv i and conv i+1 in a chain, by direct reasoning on the masks.

    Every conv is a padded 3x3, so a channel is an input-independent constant only when all
    its non-zero weights read channels that are exactly 0: then it is its bias b (pre
    activation) and act(b) after. zero: that constant is 0 (structurally: bias 0); a
    constant 0 after the activation (Relu of a negative bias) contributes nothing either.
    live: read with a non-zero weight by a live filter of the next conv (the last conv's
    filters are graph outputs: live). A channel goes when its pre-activation value is
    constant or unused and its post-activation value is 0 or unused (a non-zero constant
    read by a live padded conv cannot be folded: it varies at the borders). A filter that
    goes is not live: it reads nothing any more.
    """
    n = len(weights)
    const_pre, post0, zero_post = [], [], []
    prev_val = np.full(weights[0].shape[1], np.nan)     # graph input: not constant
    for i in range(n):
        reads = (weights[i] != 0).reshape(weights[i].shape[0], weights[i].shape[1], -1).any(axis=2)
        reads_only_zeros = ~(reads & ~(prev_val == 0)[None, :]).any(axis=1)
        pre = np.where(reads_only_zeros, biases[i].astype(np.float64), np.nan)
        const_pre.append(~np.isnan(pre))
        structural = reads_only_zeros & (biases[i] == 0)
        if i < n - 1:
            with np.errstate(all="ignore"):
                post = np.where(np.isnan(pre), np.nan, ACT[acts[i]](pre.astype(np.float32)).astype(np.float64))
            zero_post.append(structural & (acts[i] in ("Relu", "LeakyRelu")))
            post0.append(post == 0)
            prev_val = post
    live = np.ones(weights[-1].shape[0], bool)
    kept = [None] * (n - 1)
    for i in range(n - 2, -1, -1):
        reads = (weights[i + 1] != 0).reshape(weights[i + 1].shape[0], weights[i + 1].shape[1], -1).any(axis=2)
        needed_post = (reads & live[:, None]).any(axis=0)
        needed_pre = needed_post & ~zero_post[i]     # the activation is the only reader
        gone = (const_pre[i] | ~needed_pre) & (post0[i] | ~needed_post)
        if gone.all():
            gone[0] = False
        kept[i] = int((~gone).sum())
        live = ~gone & needed_pre & ~(const_pre[i] & (biases[i] == 0))
    return kept


@st.composite
def chains(draw):
    depth = draw(st.integers(2, 4))
    widths = [3] + [draw(st.integers(1, 6)) for _ in range(depth)]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    weights, biases, acts = [], [], []
    for i in range(depth):
        cout, cin = widths[i + 1], widths[i]
        wv = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
        bv = rng.standard_normal(cout).astype(np.float32)
        zero_out = draw(st.lists(st.booleans(), min_size=cout, max_size=cout))
        zero_in = draw(st.lists(st.booleans(), min_size=cin, max_size=cin)) if i else [False] * cin
        wv[np.array(zero_out)] = 0
        bv[np.array(zero_out)] = 0
        wv[:, np.array(zero_in)] = 0
        weights.append(wv)
        biases.append(bv)
        acts.append(draw(st.sampled_from(["Relu", "Sigmoid", "LeakyRelu", "Softplus"])))
    return weights, biases, acts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains())
def test_property_random_chains_are_cut_exactly_and_optimally(chain_spec):
    weights, biases, acts = chain_spec
    n = Net()
    t = n.input(["N", 3, 6, 6])
    for i, (wv, bv) in enumerate(zip(weights, biases)):
        t = n.op("Conv", [t, n.const(wv), n.const(bv)], name=f"c{i}", pads=[1] * 4)
        if i < len(weights) - 1:
            t = n.op(acts[i], [t])
    m, _ = cut(n.model(t))
    ws = conv_weights(m)
    kept = expected_chain(weights, biases, acts)
    for i, k in enumerate(kept):
        assert ws[f"c{i}"].shape[0] == k and ws[f"c{i + 1}"].shape[1] == k
    assert ws[f"c{len(weights) - 1}"].shape[0] == weights[-1].shape[0]


@st.composite
def residual_stages(draw):
    blocks, c = draw(st.integers(1, 3)), draw(st.integers(2, 6))
    masks = lambda: np.array(draw(st.lists(st.booleans(), min_size=c, max_size=c)))  # noqa: E731
    return {"c": c, "stem": masks(), "last": [masks() for _ in range(blocks)],
            "first_in": [masks() for _ in range(blocks)], "head_in": masks(), "seed": draw(st.integers(0, 999))}


def expected_stream(spec):
    """Stream channels kept: s_0 = stem, s_k = s_{k-1} + b_k; b_k zero where the block's last conv is."""
    blocks = len(spec["last"])
    zero = [spec["stem"]]
    for k in range(blocks):
        zero.append(zero[-1] & spec["last"][k])
    needed = [None] * (blocks + 1)
    needed[blocks] = ~spec["head_in"]
    for k in range(blocks - 1, -1, -1):
        live_next = needed[k + 1] & ~zero[k + 1]
        # block k's inner channels (random, dense) matter iff one of its last conv's filters is live
        block_live = (live_next & ~spec["last"][k]).any()
        needed[k] = (~spec["first_in"][k] & block_live) | live_next
    dead = np.ones(spec["c"], bool)
    for k in range(blocks + 1):
        dead &= zero[k] | ~needed[k]
        if k:   # b_k: zero where the last conv is, needed where s_k is live
            dead &= spec["last"][k - 1] | ~(needed[k] & ~zero[k])
    if dead.all():
        dead[0] = False
    return int((~dead).sum())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(residual_stages())
def test_property_residual_stages_cut_exactly_and_optimally(spec):
    c = spec["c"]
    n = Net(seed=spec["seed"])
    x = n.input(["N", 3, 6, 6])
    s = n.conv(x, 3, c, zero_out=np.flatnonzero(spec["stem"]), name="stem")
    for k in range(len(spec["last"])):
        h = n.op("Relu", [n.conv(s, c, 4, zero_in=np.flatnonzero(spec["first_in"][k]), name=f"f{k}")])
        s = n.op("Add", [s, n.conv(h, 4, c, zero_out=np.flatnonzero(spec["last"][k]), name=f"l{k}")])
    y = n.conv(s, c, 2, zero_in=np.flatnonzero(spec["head_in"]), name="head")
    m, _ = cut(n.model(y))
    kept = expected_stream(spec)
    ws = conv_weights(m)
    assert ws["stem"].shape[0] == kept and ws["head"].shape[1] == kept
    assert all(ws[f"l{k}"].shape[0] == kept and ws[f"f{k}"].shape[1] == kept for k in range(len(spec["last"])))


# --- zoo and real models: random structured masks -> exact cut, nothing left to cut ---------------

import onnx_graphsurgeon as gs  # noqa: E402


def zero_random_channels(graph: gs.Graph, seed: int, frac: float = 0.15) -> None:
    """Zero random filters (weights + bias) and input columns of every dense conv; BN entries too."""
    rng = np.random.default_rng(seed)
    for n in graph.nodes:
        if n.op == "Conv" and isinstance(n.inputs[1], gs.Constant):
            wv = np.array(n.inputs[1].values)
            rows = (rng.random(wv.shape[0]) < frac) & (wv.shape[0] > 2)
            wv[rows] = 0
            if n.attrs.get("group", 1) == 1:
                wv[:, (rng.random(wv.shape[1]) < frac / 2) & (wv.shape[1] > 2)] = 0
            n.inputs[1].values = wv
            if len(n.inputs) > 2 and isinstance(n.inputs[2], gs.Constant):
                bv = np.array(n.inputs[2].values)
                bv[rows] = 0
                n.inputs[2].values = bv
        elif n.op == "BatchNormalization" and all(isinstance(t, gs.Constant) for t in n.inputs[1:3]):
            rows = rng.random(n.inputs[1].shape[0]) < frac
            for t in n.inputs[1:3]:
                v = np.array(t.values)
                v[rows] = 0
                t.values = v


def cut_zeroed(model: onnx.ModelProto, shape, seed: int = 0, frac: float = 0.15) -> tuple[onnx.ModelProto, dict]:
    g = to_graph(model)
    zero_random_channels(g, seed, frac)
    zeroed = to_model(g)
    shapes = {zeroed.graph.input[0].name: list(shape)}
    out, stats = cut(zeroed, shapes)
    assert stats["slots_removed"] > 0
    return out, stats


def test_zoo_random_masks_are_cut_exactly(zoo_model):
    name, exporter, model, shape = zoo_model
    out, stats = cut_zeroed(model, shape)
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]


def test_zoo_with_unfolded_batchnorm(zoo_bn_model):
    name, model, shape = zoo_bn_model
    cut_zeroed(model, shape, seed=1)


@pytest.mark.parametrize("kind", ["cls", "rec"])
def test_ppocr_random_masks_are_cut_exactly(kind):
    from smof_onnx.passes.pipeline import canonicalize
    from tests import cases
    model = cases.load_ppocr(kind)
    shapes = {model.graph.input[0].name: list(cases.ppocr.PPOCR_SHAPES[kind])}
    canon = to_model(canonicalize(to_graph(model), shapes).graph)
    cut_zeroed(canon, shapes[model.graph.input[0].name], frac=0.1)
