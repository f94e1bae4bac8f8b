"""count_cost: FLOPs = 2 x MACs of Conv / ConvTranspose / Gemm / MatMul, params of their
float constants (each once), on concrete shapes. Every expected number is worked out by hand
in the test from the layer's definition, never read back from the counter."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from smof_onnx.passes.analysis.flops import count_cost
from smof_onnx.passes.base import ModelError
from smof_onnx.passes.graph import to_graph

F = onnx.TensorProto.FLOAT


def _init(name, shape, seed=0):
    return onh.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = oh.make_graph(nodes, "g", inputs, outputs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _vi(name, shape):
    if shape is None:  # an output: its size is left for the counter to infer
        return oh.make_tensor_value_info(name, F, ["d0"])
    return oh.make_tensor_value_info(name, F, shape)


def test_conv_counts_two_macs_per_output_weight_product_and_weight_plus_bias_params():
    m = _model([oh.make_node("Conv", ["x", "w", "b"], ["y"], name="c", pads=[1, 1, 1, 1])],
               [_vi("x", [1, 3, 8, 8])], [_vi("y", None)], [_init("w", [4, 3, 3, 3]), _init("b", [4])])
    cost = count_cost(m)
    # 8x8 output (pad 1 keeps the size), 4 filters, each 3 channels x 3x3 taps.
    assert cost.flops == 2 * (4 * 8 * 8) * (3 * 3 * 3)
    assert cost.params == 4 * 3 * 3 * 3 + 4
    (layer,) = cost.layers
    assert (layer.name, layer.op, layer.kernel) == ("c", "Conv", (3, 3))
    assert (layer.in_channels, layer.out_channels, layer.groups) == (3, 4, 1)
    assert layer.output_shape == (1, 4, 8, 8)
    assert layer.params == cost.params


def test_grouped_strided_dilated_conv_uses_the_inferred_output_size():
    # 4 input channels in 2 groups, 8 filters of 2x3x3, stride 2, dilation 2, no pad, 2 images.
    # Output size: (11 - 2*(3-1) - 1) // 2 + 1 = 4.
    m = _model([oh.make_node("Conv", ["x", "w"], ["y"], name="g", group=2, strides=[2, 2], dilations=[2, 2])],
               [_vi("x", [2, 4, 11, 11])], [_vi("y", None)], [_init("w", [8, 2, 3, 3])])
    cost = count_cost(m)
    assert cost.layers[0].output_shape == (2, 8, 4, 4)
    assert cost.flops == 2 * (2 * 8 * 4 * 4) * (2 * 3 * 3)
    assert (cost.layers[0].in_channels, cost.layers[0].groups) == (4, 2)


def test_depthwise_conv_counts_one_input_channel_per_filter():
    m = _model([oh.make_node("Conv", ["x", "w"], ["y"], name="dw", group=6, pads=[1, 1, 1, 1])],
               [_vi("x", [1, 6, 5, 5])], [_vi("y", None)], [_init("w", [6, 1, 3, 3])])
    assert count_cost(m).flops == 2 * (6 * 5 * 5) * 9


@pytest.mark.parametrize("spatial,kernel", [((16,), (5,)), ((4, 6, 6), (3, 1, 3))])
def test_conv_1d_and_3d(spatial, kernel):
    out = tuple(s - k + 1 for s, k in zip(spatial, kernel))
    m = _model([oh.make_node("Conv", ["x", "w"], ["y"], name="c")],
               [_vi("x", [1, 2, *spatial])], [_vi("y", None)], [_init("w", [3, 2, *kernel])])
    cost = count_cost(m)
    assert cost.layers[0].kernel == kernel
    assert cost.flops == 2 * 3 * int(np.prod(out)) * 2 * int(np.prod(kernel))


def test_conv_transpose_counts_input_elements_times_weights_per_input():
    # W[Cin=4, Cout/g=2, 3, 3], stride 2: every one of the 4*5*5 input values meets 2*9 weights.
    m = _model([oh.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2])],
               [_vi("x", [1, 4, 5, 5])], [_vi("y", None)], [_init("w", [4, 2, 3, 3])])
    cost = count_cost(m)
    layer = cost.layers[0]
    assert layer.output_shape == (1, 2, 11, 11)
    assert (layer.in_channels, layer.out_channels) == (4, 2)
    assert cost.flops == 2 * (4 * 5 * 5) * (2 * 3 * 3)
    assert cost.params == 4 * 2 * 9


def test_gemm_with_trans_b_and_bias_not_counted_as_flops():
    m = _model([oh.make_node("Gemm", ["a", "w", "b"], ["y"], name="fc", transB=1)],
               [_vi("a", [3, 10])], [_vi("y", None)], [_init("w", [5, 10]), _init("b", [5])])
    cost = count_cost(m)
    assert cost.flops == 2 * 3 * 10 * 5
    assert cost.params == 5 * 10 + 5
    assert (cost.layers[0].in_channels, cost.layers[0].out_channels) == (10, 5)


def test_gemm_with_trans_a():
    m = _model([oh.make_node("Gemm", ["a", "w"], ["y"], name="fc", transA=1)],
               [_vi("a", [10, 3])], [_vi("y", None)], [_init("w", [10, 7])])
    assert count_cost(m).flops == 2 * 3 * 10 * 7


def test_batched_matmul_of_two_activations_has_flops_but_no_params():
    m = _model([oh.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
               [_vi("a", [2, 3, 4, 5]), _vi("b", [2, 3, 5, 6])], [_vi("y", None)], [])
    cost = count_cost(m)
    assert cost.flops == 2 * (2 * 3 * 4 * 6) * 5
    assert cost.params == 0 and cost.layers[0].params == 0


def test_matmul_broadcast_and_1d_operands():
    m = _model([oh.make_node("MatMul", ["a", "w"], ["y"], name="bcast"),
                oh.make_node("MatMul", ["v", "w"], ["z"], name="vec")],
               [_vi("a", [4, 7, 5]), _vi("v", [5])], [_vi("y", None), _vi("z", None)], [_init("w", [5, 3])])
    cost = count_cost(m)
    assert cost.layer("bcast").flops == 2 * (4 * 7 * 3) * 5
    assert cost.layer("vec").flops == 2 * 3 * 5
    # One shared weight tensor: counted once for the model, once per layer that reads it.
    assert cost.params == 15
    assert cost.layer("bcast").params == cost.layer("vec").params == 15


def test_only_weighted_ops_count_and_constant_node_weights_are_params():
    w = onh.from_array(np.ones([2, 3, 1, 1], np.float32), "wv")
    m = _model([oh.make_node("Constant", [], ["w"], value=w),
                oh.make_node("Conv", ["x", "w"], ["c"], name="c"),
                oh.make_node("Relu", ["c"], ["r"]),
                oh.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2])],
               [_vi("x", [1, 3, 4, 4])], [_vi("y", None)], [])
    cost = count_cost(m)
    assert [lc.op for lc in cost.layers] == ["Conv"]
    assert cost.flops == 2 * 2 * 16 * 3
    assert cost.params == 6


def test_symbolic_batch_counts_as_one_unless_given():
    m = _model([oh.make_node("Conv", ["x", "w"], ["y"], name="c")],
               [_vi("x", ["N", 3, 6, 6])], [_vi("y", None)], [_init("w", [2, 3, 3, 3])])
    one = count_cost(m).flops
    assert one == 2 * (2 * 4 * 4) * 27
    assert count_cost(m, {"x": [4, 3, 6, 6]}).flops == 4 * one
    # The spatial size can be given too: 10x10 -> 8x8 outputs.
    assert count_cost(m, {"x": [1, 3, 10, 10]}).flops == 2 * (2 * 8 * 8) * 27


def test_symbolic_spatial_dim_without_shapes_is_a_model_error_naming_the_input():
    m = _model([oh.make_node("Conv", ["x", "w"], ["y"], name="c")],
               [_vi("x", ["N", 3, "H", "W"])], [_vi("y", None)], [_init("w", [2, 3, 3, 3])])
    with pytest.raises(ModelError, match="'x'"):
        count_cost(m)


def test_graph_and_model_give_the_same_cost():
    m = _model([oh.make_node("Conv", ["x", "w"], ["c"], name="c", pads=[1, 1, 1, 1]),
                oh.make_node("Flatten", ["c"], ["f"]),
                oh.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1)],
               [_vi("x", [1, 3, 4, 4])], [_vi("y", None)], [_init("w", [2, 3, 3, 3]), _init("fw", [5, 32])])
    a, b = count_cost(m), count_cost(to_graph(m))
    assert a == b
    assert a.flops == 2 * (2 * 16 * 27) + 2 * (32 * 5)


def test_shapes_inference_cannot_tell_are_read_by_running_the_model():
    # The Reshape target is computed from a data-dependent NonZero count, beyond shape inference.
    m = _model([oh.make_node("NonZero", ["mask"], ["nz"]),
                oh.make_node("Shape", ["nz"], ["nzs"]),
                oh.make_node("Slice", ["nzs", "one", "two"], ["cnt"]),
                oh.make_node("Concat", ["cnt", "minus1"], ["target"], axis=0),
                oh.make_node("Reshape", ["x", "target"], ["xr"]),
                oh.make_node("MatMul", ["xr", "w"], ["y"], name="mm")],
               [_vi("x", [6, 4])], [_vi("y", None)],
               [onh.from_array(np.array([1, 0, 1, 1, 0, 1], np.float32), "mask"),
                onh.from_array(np.array([1], np.int64), "one"), onh.from_array(np.array([2], np.int64), "two"),
                onh.from_array(np.array([-1], np.int64), "minus1"), _init("w", [6, 3])])
    cost = count_cost(m)
    # 4 nonzeros -> x is reshaped to [4, 6] -> [4,6] x [6,3].
    assert cost.layer("mm").output_shape == (4, 3)
    assert cost.flops == 2 * 4 * 6 * 3
