"""Constant (input-independent) channels: PP-LCNetV3's scalar affine after the activation turns a
zeroed channel into a constant b; the cut folds it into the readers' biases and removes it.

Each test builds a small block, cuts it with :func:`smof_onnx.passes.pipeline.cut`, checks ONNX
Runtime before vs after (max rel err <= 1e-5, full checker) and counts the channels that must go
by reasoning on the masks here, not by asking the analysis.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from smof_onnx.passes import pipeline
from smof_onnx.passes.analysis.channels import analyze_channels
from smof_onnx.passes.graph import to_graph, to_model
from tests.helpers import assert_equivalent, conv_weights, op_counts
from tests.test_analysis_channels import Net

SHAPES = {"x": [2, 3, 8, 8]}


def affine(n: Net, t: str, s: float, b: float, name: str = "add") -> str:
    """PP-LCNetV3's LearnableAffineBlock: Mul by a scalar s, then Add of a scalar b."""
    t = n.op("Mul", [n.const(np.asarray([s], np.float32)), t])
    return n.op("Add", [t, n.const(np.asarray([b], np.float32))], name=name)


def block(c: int, zero: tuple[int, ...], b: float, head: str, seed: int = 0):
    """x -> conv 3x3 (filters `zero` zeroed) -> HardSwish -> Mul(s) -> Add(b) -> head."""
    n = Net(opset=14, seed=seed)
    x = n.input(["N", 3, 8, 8])
    t = affine(n, n.op("HardSwish", [n.conv(x, 3, c, zero_out=zero, name="c1")]), 0.37, b)
    if head == "conv1x1":
        y = n.conv(t, c, 4, k=1, pads=[0] * 4, name="c2")
    elif head == "conv3x3":
        y = n.conv(t, c, 4, k=3, name="c2")
    elif head in ("gemm", "matmul", "gap"):
        f = n.op("Flatten", [n.op("GlobalAveragePool" if head == "gap" else "GlobalMaxPool", [t])])
        if head in ("gemm", "gap"):
            y = n.gemm(f, c, 5, name="fc")
        else:
            y = n.op("MatMul", [f, n.const(n.weight((c, 5)))], name="fc")
    else:  # maxpool then 1x1: pooling keeps a constant
        p = n.op("MaxPool", [t], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
        y = n.conv(p, c, 4, k=1, pads=[0] * 4, name="c2")
    return n.model(y)


def cut(model):
    res = pipeline.cut(to_graph(model), SHAPES)
    out = to_model(res.graph)
    assert_equivalent(model, out, SHAPES)
    return out, res


def kept_expected(c: int, zero: tuple[int, ...], b: float, head: str) -> int:
    """A zeroed filter gives hardswish(0) * s + b = b everywhere: it goes when b = 0, or when the
    reader adds the same term at every position (unpadded 1x1 conv, Gemm / MatMul after a global
    max pool, a 1x1 conv after a max pool whose windows always hold a real element). Not after a
    padded 3x3 conv, nor after an average pool (its float32 mean of b is b only up to rounding)."""
    goes = len(zero) if (b == 0.0 or head not in ("conv3x3", "gap")) else 0
    return max(c - goes, 1)


@pytest.mark.parametrize("head", ["conv1x1", "conv3x3", "gemm", "matmul", "maxpool", "gap"])
@pytest.mark.parametrize("b", [0.0886, 0.0])
def test_affine_constant_channels_fold_into_the_reader(head, b):
    c, zero = 6, (1, 3, 4)
    model = block(c, zero, b, head)
    out, res = cut(model)
    kept = kept_expected(c, zero, b, head)
    assert conv_weights(out)["c1"].shape[0] == kept
    if head in ("conv1x1", "conv3x3", "maxpool"):
        assert conv_weights(out)["c2"].shape[1] == kept
    if head == "matmul" and b:
        assert op_counts(out)["Add"] == op_counts(model)["Add"] + 1   # the folded term, after the MatMul
        assert res.merged_stats("cut_dead_channels")["folded"]
    if head == "conv3x3" and b:
        reasons = [r["reason"] for r in res.merged_stats("cut_dead_channels")["constants_kept"]]
        assert any("constant 0.0886 after Add 'add'" in r and "Conv 'c2' is padded" in r for r in reasons), reasons


def test_every_filter_zeroed_keeps_one_channel():
    c = 4
    out, _ = cut(block(c, tuple(range(c)), 0.5, "conv1x1"))
    assert conv_weights(out)["c1"].shape[0] == 1


def lcnet(c: int, zero_pw: tuple[int, ...], zero_dw: tuple[int, ...], seed: int = 0, k_last: int = 1):
    """pw 1x1 -> HardSwish -> affine -> dw 3x3 (padded) -> HardSwish -> affine -> pw 1x1 (a PP-LCNetV3 block)."""
    n = Net(opset=14, seed=seed)
    x = n.input(["N", 3, 8, 8])
    t = n.conv(x, 3, c, k=1, pads=[0] * 4, zero_out=zero_pw, name="pw1")
    t = affine(n, n.op("HardSwish", [t]), 0.41, 0.0886, name="add1")
    t = n.conv(t, c, c, k=3, group=c, zero_out=zero_dw, name="dw")
    t = affine(n, n.op("HardSwish", [t]), 1.7, -0.2009, name="add2")
    return n.model(n.conv(t, c, 4, k=k_last, pads=[k_last // 2] * 4, name="pw2"))


def test_lcnet_block_gates_every_channel_and_cuts_the_zeroed_ones():
    c = 6
    a = analyze_channels(to_graph(lcnet(c, (), ())), SHAPES)
    pw1_slots = [a.slots[int(s)] for s in a.slots_of(next(t for t in a.spaces if t.startswith("conv")))]
    assert len(pw1_slots) == c
    assert all(s.zero_if_producers_zeroed and not s.removable and s.kept_because is None for s in pw1_slots)
    assert {p[0] for s in pw1_slots for p in s.producers} == {"pw1", "dw"}
    # the learned method zeroes every producer of a gated slot: pw1's filter and dw's filter + bias
    out, _ = cut(lcnet(c, (0, 2, 5), (0, 2, 5)))
    ws = conv_weights(out)
    assert ws["pw1"].shape[0] == ws["dw"].shape[0] == ws["pw2"].shape[1] == c - 3


def test_lcnet_padded_depthwise_of_a_constant_is_kept_with_a_reason():
    """Only pw1 zeroed: the dw conv sees the constant 0.0886 and its padded output varies at the borders."""
    out, res = cut(lcnet(4, (1,), ()))
    assert conv_weights(out)["pw1"].shape[0] == 4
    assert any("constant 0.0886 after Add 'add1'" in r["reason"] and "Conv 'dw' is padded" in r["reason"]
               for r in res.merged_stats("cut_dead_channels")["constants_kept"])


def test_analysis_exposes_constants_and_why_a_slot_is_kept():
    """A padded 3x3 reader: the slots are neither removable nor gateable, and say why."""
    a = analyze_channels(to_graph(block(4, (1,), 0.0886, "conv3x3")), SHAPES)
    add_out = next(t for t in a.spaces if t.startswith("add"))
    assert a.tensor_constant(add_out)[1] == pytest.approx(0.0886, rel=1e-6)
    assert np.isnan(a.tensor_constant(add_out)[[0, 2, 3]]).all()
    slot = a.slots[int(a.slots_of(add_out)[1])]
    assert not slot.removable and not slot.zero_if_producers_zeroed
    assert slot.constants[add_out] == pytest.approx(0.0886, rel=1e-6)
    assert "constant 0.0886 after Add 'add'" in slot.kept_because and "Conv 'c2' is padded" in slot.kept_because
    group = next(g for g in a.groups if slot.id in g.slots)
    assert slot.id in group.constant_slots and slot.kept_because in group.kept_because


@st.composite
def blocks(draw):
    c = draw(st.integers(1, 6))
    zero = tuple(i for i in range(c) if draw(st.booleans()))
    b = draw(st.sampled_from([0.0, 0.0886, -1.5]))
    head = draw(st.sampled_from(["conv1x1", "conv3x3", "gemm", "matmul", "maxpool", "gap"]))
    return c, zero, b, head, draw(st.integers(0, 999))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks())
def test_property_random_masks_on_affine_blocks(spec):
    c, zero, b, head, seed = spec
    out, _ = cut(block(c, zero, b, head, seed))
    assert conv_weights(out)["c1"].shape[0] == kept_expected(c, zero, b, head)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 6).flatmap(lambda c: st.tuples(
    st.just(c), st.lists(st.booleans(), min_size=c, max_size=c), st.lists(st.booleans(), min_size=c, max_size=c),
    st.sampled_from([1, 3]), st.integers(0, 999))))
def test_property_random_masks_on_lcnet_blocks(spec):
    """A channel goes iff dw's filter (and bias) is zeroed and pw2 is unpadded: dw's output is then 0
    whatever it reads (so pw1's channel is unused), and -0.2009 after the affine, which a 1x1 pw2
    folds; a padded pw2 cannot, and a zeroed pw1 alone leaves a padded dw of 0.0886 (not uniform)."""
    c, zpw, zdw, k_last, seed = spec
    zero_pw = tuple(i for i in range(c) if zpw[i])
    zero_dw = tuple(i for i in range(c) if zdw[i])
    out, _ = cut(lcnet(c, zero_pw, zero_dw, seed, k_last))
    goes = len(zero_dw) if k_last == 1 else 0
    assert conv_weights(out)["pw1"].shape[0] == max(c - goes, 1)


# --- PP-OCR: the floor (every gateable slot but one per family zeroed, then cut) ----------------

def ppocr_floor(kind: str, keep: float = 0.0, seed: int = 0):
    """(floor FLOPs ratio, zeroed model, cut model, shapes): all but one slot of every channel family
    zeroed (``keep``: each other slot kept with that probability), as the learned method writes it."""
    import onnx

    from models import ppocr
    from smof_onnx.selection import select
    from smof_onnx.passes.analysis.flops import count_cost

    model = onnx.load(str(ppocr.ppocr_path(kind)))
    shapes = {ppocr.INPUT_NAME: list(ppocr.PPOCR_SHAPES[kind])}
    prob = select.prepare(model, shapes, kernel=False, channel=True, multiple=1)
    space = prob.space
    h = (np.random.default_rng(seed).random(space.size) < keep).astype(float)
    for fam in space.families:
        h[fam.gates[0]] = 1.0
    zeroed = space.apply(prob.model, h)
    cut_model = to_model(pipeline.cut(to_graph(zeroed), shapes).graph)
    return count_cost(cut_model, shapes).flops / prob.cost.flops, zeroed, cut_model, shapes


# Floors before constant channels were removable: det 0.325, rec 0.936, cls 0.011.
@pytest.mark.parametrize("kind,ceiling", [("det", 0.05), ("rec", 0.2), ("cls", 0.05)])
def test_ppocr_floor_falls_and_the_cut_stays_exact(kind, ceiling):
    ratio, zeroed, cut_model, shapes = ppocr_floor(kind)
    assert ratio < ceiling
    assert_equivalent(zeroed, cut_model, shapes, seeds=(0,))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["det", "rec", "cls"])
def test_ppocr_random_half_masks_cut_exactly(kind):
    ratio, zeroed, cut_model, shapes = ppocr_floor(kind, keep=0.5, seed=1)
    assert 0 < ratio < 0.8
    assert_equivalent(zeroed, cut_model, shapes, seeds=(0, 1))


def test_a_constant_that_is_averaged_is_named_as_such():
    """Zeroing the producers leaves a constant that a GlobalAveragePool averages: not folded
    (float32 rounding of the mean), and the reason says so with the value and the node."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 3, 8, 8] x) => (float[1, 4, 1, 1] y) <float[4, 3, 1, 1] w1, float[4] b1, float[1] s, float[1] o,
                                                         float[4, 4, 1, 1] w2> {
            c1 = Conv (x, w1, b1)
            m = Mul (c1, s)
            a = Add (m, o)
            p = GlobalAveragePool (a)
            y = Conv (p, w2)
        }""")
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (4, 3, 1, 1)), ("b1", (4,)), ("w2", (4, 4, 1, 1))):
        model.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1.5], np.float32), "s"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0.25], np.float32), "o"))
    a = analyze_channels(to_graph(model), {"x": [1, 3, 8, 8]})
    slot = a.slots[int(a.slots_of("c1")[0])]
    assert not slot.removable and not slot.zero_if_producers_zeroed
    assert "averages the constant 0.25" in slot.kept_because and "GlobalAveragePool" in slot.kept_because
