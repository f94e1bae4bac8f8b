"""Gates: kernel rings per conv axis (outer before inner), channel gates per removable slot grouped
in families that respect the channel multiple, and their zeros, which the exact cut removes."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from smof_onnx.passes import graph as pgraph
from smof_onnx.passes import pipeline
from smof_onnx.selection.select import prepare
from tests.helpers import assert_equivalent, random_inputs

F = onnx.TensorProto.FLOAT


def tiny_cnn(seed: int = 0, width: int = 8, classes: int = 5) -> onnx.ModelProto:
    """x[N,3,8,8] -> conv1 3x3 -> relu -> conv2 3x3 -> + relu1 (residual) -> relu -> conv3 5x5 (2*width)
    -> relu -> GlobalAveragePool -> Flatten -> Gemm -> y[N, classes]."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return onh.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32))

    inits = {"w1": w(width, 3, 3, 3), "b1": w(width), "w2": w(width, width, 3, 3), "b2": w(width),
             "w3": w(2 * width, width, 5, 5), "b3": w(2 * width), "wf": w(classes, 2 * width), "bf": w(classes)}
    inits = [onh.from_array(onh.to_array(t), name) for name, t in inits.items()]
    nodes = [
        oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        oh.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        oh.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        oh.make_node("Relu", ["a"], ["r2"], name="relu2"),
        oh.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", pads=[2, 2, 2, 2]),
        oh.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        oh.make_node("GlobalAveragePool", ["r3"], ["p"], name="gap"),
        oh.make_node("Flatten", ["p"], ["f"], name="flatten"),
        oh.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    graph = oh.make_graph(nodes, "tiny", [oh.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                          [oh.make_tensor_value_info("y", F, ["N", classes])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny_cnn_batch_one(seed: int = 0) -> onnx.ModelProto:
    """:func:`tiny_cnn` as exporters write it at batch 1: static input / output batch, the
    flatten before the head a Reshape to [1, -1] (the batch baked into a constant)."""
    model = tiny_cnn(seed)
    for vi in [*model.graph.input, *model.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    flatten = next(n for n in model.graph.node if n.op_type == "Flatten")
    flatten.op_type = "Reshape"
    del flatten.attribute[:]
    flatten.input.append("flat_shape")
    model.graph.initializer.append(onh.from_array(np.array([1, -1], np.int64), "flat_shape"))
    onnx.checker.check_model(model)
    return model


def cut_model(model: onnx.ModelProto, shapes) -> onnx.ModelProto:
    return pgraph.to_model(pipeline.cut(pgraph.to_graph(model), shapes).graph)


def conv_weights(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node if n.op_type == "Conv"}


def test_kernel_gates_are_per_axis_rings_outer_first():
    p = prepare(tiny_cnn(), None, channel=False)
    by_node = {}
    for g in p.space.kernel:
        by_node.setdefault(g.node, []).append((g.axis, g.level, g.slices))
    assert by_node["conv1"] == [(0, 1, (0, 2)), (1, 1, (0, 2))]
    assert by_node["conv3"] == [(0, 1, (0, 4)), (0, 2, (1, 3)), (1, 1, (0, 4)), (1, 2, (1, 3))]
    assert p.space.channel == [] and p.space.size == 8


def test_an_inner_ring_drops_the_outer_one_with_it():
    p = prepare(tiny_cnn(), None, channel=False)
    inner = next(g.index for g in p.space.kernel if g.node == "conv3" and g.axis == 0 and g.level == 2)
    outer = next(g.index for g in p.space.kernel if g.node == "conv3" and g.axis == 0 and g.level == 1)
    h = np.ones(p.space.size)
    h[inner] = 0
    e = p.space.effective(h)
    assert e[inner] == 0 and e[outer] == 0 and e.sum() == p.space.size - 2
    mask = p.space.kernel_mask("w3", h)
    np.testing.assert_array_equal(mask[:, 0], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(mask[2], np.ones(5))


def test_kernel_zeros_are_cut_to_smaller_kernels_exactly():
    model = tiny_cnn()
    p = prepare(model, None, channel=False)
    h = np.ones(p.space.size)
    for g in p.space.kernel:
        if (g.node, g.axis) in {("conv1", 1), ("conv3", 0)}:  # conv1 -> 3x1, conv3 -> 1x5
            h[g.index] = 0
    zeroed = p.space.apply(p.model, h)
    cut = cut_model(zeroed, p.shapes)
    shapes = conv_weights(cut)
    assert shapes["conv1"][2:] == (3, 1) and shapes["conv3"][2:] == (1, 5) and shapes["conv2"][2:] == (3, 3)
    onnx.checker.check_model(cut, full_check=True)
    assert_equivalent(zeroed, cut)


def test_channel_gates_form_families_with_the_residual_stream_shared():
    p = prepare(tiny_cnn(), None, kernel=False, multiple=1)
    fams = {tuple(sorted({node for g in f.gates for node, _, _ in p.space.channel[g].producers})): len(f.gates)
            for f in p.space.families}
    # conv1 and conv2 feed the same residual stream: one slot per channel, both producers zeroed
    assert fams == {("conv1", "conv2"): 8, ("conv3",): 16}
    assert all(len(g.producers) == 2 for g in p.space.channel if g.family == 0)


def test_channel_multiple_limits_kept_counts():
    p = prepare(tiny_cnn(), None, kernel=False, multiple=8)
    # the 8-channel residual family can only keep all 8: it gets no gates
    assert [len(f.gates) for f in p.space.families] == [16]
    assert p.space.families[0].allowed(8) == [8, 16]
    p4 = prepare(tiny_cnn(), None, kernel=False, multiple=4)
    assert [f.allowed(4) for f in p4.space.families] == [[4, 8], [4, 8, 12, 16]]


def test_binarize_rounds_to_an_allowed_count_and_keeps_the_top_scores():
    p = prepare(tiny_cnn(), None, kernel=False, multiple=4)
    fam = p.space.families[1]
    s = np.ones(p.space.size)
    idx = np.asarray(fam.gates)
    s[idx] = np.linspace(0, 1, 16)       # 9 of 16 over 0.5 -> rounded to 8: the 8 best
    h = p.space.binarize(s)
    assert h[idx].sum() == 8 and h[idx[8:]].all() and not h[idx[:8]].any()
    s[idx] = 0.0                           # never all gone: the smallest allowed count remains
    assert p.space.binarize(s)[idx].sum() == 4


def test_channel_zeros_are_cut_and_equal_the_hooked_executor():
    torch = pytest.importorskip("torch")
    from smof_onnx.learn.executor import OnnxModule
    from smof_onnx.learn.masking import Masks

    p = prepare(tiny_cnn(), None, multiple=4)
    h = np.ones(p.space.size)
    drop = [p.space.families[0].gates[i] for i in (1, 2, 5, 7)] + list(p.space.families[1].gates[:8])
    h[drop] = 0
    h[[g.index for g in p.space.kernel if g.node == "conv2"]] = 0
    zeroed = p.space.apply(p.model, h)
    cut = cut_model(zeroed, p.shapes)
    shapes = conv_weights(cut)
    assert shapes["conv1"] == (4, 3, 3, 3) and shapes["conv2"] == (4, 4, 1, 1) and shapes["conv3"] == (8, 4, 5, 5)
    feeds = random_inputs(zeroed, batch=3)
    assert_equivalent(zeroed, cut)

    module = OnnxModule(p.model)
    masks = Masks(p.space, module, h)
    with torch.no_grad():
        hooked = module(torch.from_numpy(feeds["x"]))[0].numpy()
    masks.remove()
    from tests.helpers import session
    want = session(zeroed).run(None, feeds)[0]
    assert np.abs(hooked - want).max() <= 1e-5 * np.abs(want).max()


def test_mask_gradients_reach_every_gate():
    torch = pytest.importorskip("torch")
    from smof_onnx.learn.executor import OnnxModule
    from smof_onnx.learn.masking import Masks

    p = prepare(tiny_cnn(), None, multiple=1)
    module = OnnxModule(p.model)
    masks = Masks(p.space, module)
    masks.set(np.ones(p.space.size), requires_grad=True)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    (module(x)[0] ** 2).sum().backward()
    grad = masks.grad
    assert grad.shape == (p.space.size,)
    kernel_and_residual = [g.index for g in p.space.kernel] + list(p.space.families[0].gates)
    assert np.all(grad[kernel_and_residual] != 0)
    # conv3 channels that Relu kills on every input have no gradient; most are alive
    assert np.count_nonzero(grad[list(p.space.families[1].gates)]) >= 12


def test_auto_multiple_is_16_for_wide_families_and_8_for_narrow():
    p = prepare(tiny_cnn(width=16), None, multiple=0)
    by_size = {len(f.gates): f for f in p.space.families}
    assert by_size[16].multiple == 8 and by_size[16].allowed() == [8, 16]
    assert by_size[32].multiple == 16 and by_size[32].allowed() == [16, 32]
    h = p.space.binarize(np.linspace(0, 1, p.space.size))
    assert {int(h[list(f.gates)].sum()) % f.multiple for f in p.space.families} == {0}
