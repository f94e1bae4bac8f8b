"""smof_onnx.features: im2col rows equal the layer's outputs; statistics stream with bounded,
reproducible position samples."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from smof_onnx.features import SiteRefused, collect, layer_site, sample_patches
from tests.helpers import run


def _conv_model(x_shape, w, b, *, strides, pads, dilations, group=1, relu_first=True):
    """input -> [Relu] -> Conv(w, b) -> output."""
    r = w.ndim - 2
    nodes = []
    src = "input"
    if relu_first:
        nodes.append(helper.make_node("Relu", ["input"], ["act"], name="relu"))
        src = "act"
    nodes.append(helper.make_node("Conv", [src, "W", "B"], ["output"], name="conv", strides=list(strides),
                                  pads=list(pads), dilations=list(dilations), group=group))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *x_shape[1:]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None] * len(x_shape))],
        [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(b.astype(np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    assert r == len(strides)
    return model


CONV_CASES = [
    # (input shape, weight shape, strides, pads, dilations)
    ((2, 3, 9, 8), (5, 3, 3, 2), (2, 1), (1, 0, 2, 1), (2, 1)),
    ((2, 4, 7, 7), (6, 4, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((3, 2, 11), (4, 2, 5), (2,), (2, 1), (1,)),
    ((1, 2, 5, 6, 6), (3, 2, 3, 3, 3), (1, 2, 2), (1, 1, 1, 1, 1, 1), (1, 1, 1)),
]


@pytest.mark.parametrize("x_shape,w_shape,strides,pads,dilations", CONV_CASES)
def test_patches_times_weights_are_the_conv_outputs(x_shape, w_shape, strides, pads, dilations):
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    model = _conv_model(x_shape, w, b, strides=strides, pads=pads, dilations=dilations, relu_first=False)
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = run(model, {"input": x})["output"]
    site = layer_site(model, model.graph.node[0])
    assert site.dim == math.prod(w_shape[1:]) and site.cout == w_shape[0]
    # asking for every position returns them all, in (image, spatial) order
    total = y.shape[0] * math.prod(y.shape[2:])
    patches = sample_patches(x, site, np.random.default_rng(1), total + 5)
    assert patches.shape == (total, site.dim)
    expected = np.moveaxis(y, 1, -1).reshape(total, -1) - b.astype(np.float32)
    got = patches.astype(np.float64) @ site.weight.T
    assert np.max(np.abs(got - expected)) <= 1e-5 * np.max(np.abs(expected))


def test_a_sample_is_a_subset_of_the_positions_without_repeats():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3))
    model = _conv_model((2, 3, 6, 6), w, np.zeros(4), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1),
                        relu_first=False)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    site = layer_site(model, model.graph.node[0])
    every = sample_patches(x, site, np.random.default_rng(3), 10_000)
    some = sample_patches(x, site, np.random.default_rng(3), 17)
    assert some.shape == (17, 27)
    idx = [int(np.flatnonzero(np.all(every == row, axis=1))[0]) for row in some]
    assert len(set(idx)) == 17


def test_gemm_site_weight_orientation():
    rng = np.random.default_rng(0)
    for trans_b in (0, 1):
        bmat = rng.standard_normal((6, 4) if trans_b == 0 else (4, 6)).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("Gemm", ["input", "B", "C"], ["output"], name="fc", transB=trans_b)], "g",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 6])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, None])],
            [numpy_helper.from_array(bmat, "B"), numpy_helper.from_array(np.ones(4, np.float32), "C")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        x = rng.standard_normal((5, 6)).astype(np.float32)
        site = layer_site(model, model.graph.node[0])
        rows = sample_patches(x, site, np.random.default_rng(0), 5)
        y = run(model, {"input": x})["output"]
        assert np.allclose(rows @ site.weight.T, y - 1, atol=1e-5)


def test_grouped_conv_and_matmul_are_refused_with_a_reason():
    rng = np.random.default_rng(0)
    model = _conv_model((1, 4, 5, 5), rng.standard_normal((4, 1, 3, 3)), np.zeros(4), strides=(1, 1),
                        pads=(1, 1, 1, 1), dilations=(1, 1), group=4)
    with pytest.raises(SiteRefused, match="grouped/depthwise"):
        layer_site(model, model.graph.node[1])
    mm = helper.make_node("MatMul", ["a", "W"], ["b"], name="mm")
    with pytest.raises(SiteRefused, match="MatMul"):
        layer_site(model, mm)


def _collect_setup(n_images=10):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 3, 3))
    model = _conv_model((n_images, 3, 8, 8), w, np.zeros(5), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    data = {"input": rng.standard_normal((n_images, 3, 8, 8)).astype(np.float32)}
    return model, data, layer_site(model, model.graph.node[1])


def test_collect_accumulates_the_gram_of_the_sampled_patches():
    model, data, site = _collect_setup()
    stats = collect(model, data, [site], max_positions=40, batch_size=4, seed=7, keep_outputs=True)[site.node]
    # same draws by hand: batches of 4 images, ceil(40 / 3) positions each, rng(seed, batch, site)
    act = np.maximum(data["input"], 0)
    rows = [sample_patches(act[b * 4:(b + 1) * 4], site, np.random.default_rng([7, b, 0]), 14) for b in range(3)]
    x = np.concatenate(rows).astype(np.float64)
    assert stats.count == x.shape[0] == 42
    assert np.allclose(stats.xtx, x.T @ x, rtol=1e-10, atol=1e-8)
    assert np.allclose(stats.output_rows(), x @ site.weight.T, rtol=1e-5, atol=1e-4)


def test_memory_is_bounded_by_max_positions_not_by_the_data():
    model, data, site = _collect_setup(n_images=40)
    small = collect(model, data, [site], max_positions=16, batch_size=8)[site.node]
    assert small.count <= 16 + 5  # ceil(16 / 5 batches) * 5
    assert small.xtx.shape == (27, 27)


def test_a_second_collection_samples_the_same_positions():
    model, data, site = _collect_setup()
    first = collect(model, data, [site], max_positions=30, batch_size=3, seed=1, keep_outputs=True)[site.node]
    again = collect(model, data, [site], max_positions=30, batch_size=3, seed=1,
                    targets={site.node: first.output_rows()})[site.node]
    # x^T y against the recorded outputs equals x^T x W^T only if the rows line up
    assert np.allclose(again.xty, again.xtx @ site.weight.T, rtol=1e-5, atol=1e-3)
    other = collect(model, data, [site], max_positions=30, batch_size=3, seed=2)[site.node]
    assert not np.allclose(other.xtx, first.xtx)


def test_missing_input_in_data_is_an_error_naming_it():
    model, _, site = _collect_setup()
    with pytest.raises(KeyError, match="input"):
        collect(model, {"x": np.zeros((2, 3, 8, 8), np.float32)}, [site])
