"""resize_input: the model computes at a fraction of its input size; interface kept or changed.

Not an exact rewrite, so the checks are: the declared interface (names, shapes), ONNX Runtime
runs it at the original size, outputs have their original shapes, the counted FLOPs fall by the
expected factor (oracle: every Conv's FLOPs recomputed here from its weight and the output size
at the reduced input, sizes by hand), and size-bound graphs are refused with the op and reason.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import helper

from smof_onnx.passes.analysis.flops import count_cost
from smof_onnx.passes.base import PassError, UnsupportedModelError
from smof_onnx.passes.graph import to_graph, to_model
from smof_onnx.passes.resize_input import resize_input
from tests import cases
from tests.helpers import random_inputs, run


def _declared(model: onnx.ModelProto) -> dict[str, list]:
    return {vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
            for vi in list(model.graph.input) + list(model.graph.output)}


def _conv_flops_by_hand(model: onnx.ModelProto, hw: tuple[int, int]) -> int:
    """FLOPs of the Convs and the Gemm of the zoo's CIFAR-style ResNet at input size ``hw``: each
    conv with pad k//2 maps H to ceil(H / stride)."""
    inits = {i.name: onnx.numpy_helper.to_array(i).shape for i in model.graph.initializer}
    sizes, total = {"input": hw}, 0
    for n in model.graph.node:
        if n.op_type == "Conv":
            s = next((a.ints[0] for a in n.attribute if a.name == "strides"), 1)
            h, w = sizes[n.input[0]]
            out = (math.ceil(h / s), math.ceil(w / s))
            wshape = inits[n.input[1]]
            total += 2 * wshape[0] * wshape[1] * wshape[2] * wshape[3] * out[0] * out[1]
            sizes[n.output[0]] = out
        elif n.op_type == "Gemm":
            wshape = inits[n.input[1]]
            total += 2 * wshape[0] * wshape[1]
        elif n.input and n.input[0] in sizes:
            for o in n.output:
                sizes[o] = sizes[n.input[0]] if n.op_type != "GlobalAveragePool" else (1, 1)
    return total


@pytest.mark.parametrize("exporter", cases.EXPORTERS)
def test_classifier_keeps_its_interface_and_flops_fall_to_the_reduced_size(exporter):
    model = cases.load_zoo("resnet_basic", exporter)
    shapes = {"input": cases.zoo_input_shape("resnet_basic")}
    result = resize_input(to_graph(model), 0.5, input_shapes=shapes)
    out = to_model(result.graph)
    onnx.checker.check_model(out, full_check=True)
    assert _declared(out) == _declared(model)
    assert result.stats["inputs"] == {"input": {"from": [28, 28], "to": [14, 14],
                                                "method": "resize-linear-antialias"}}
    assert not result.stats["interface_changed"] and result.stats["resized_back"] == []
    ys = run(out, random_inputs(out))  # the batch stays symbolic: feed 2
    assert ys["output"].shape == (2, 10) and np.isfinite(ys["output"]).all()
    before, after = count_cost(model, shapes).flops, count_cost(out, shapes).flops
    assert before == _conv_flops_by_hand(model, (28, 28))
    assert after == _conv_flops_by_hand(model, (14, 14))
    assert 0.24 < after / before < 0.3  # about r^2 = 0.25 (odd sizes round up: 7 -> 4)


def test_declared_input_changes_when_asked():
    model = cases.load_zoo("resnet_basic")
    result = resize_input(to_graph(model), size=(20, 20), keep_interface=False)
    out = to_model(result.graph)
    assert _declared(out)["input"][1:] == [1, 20, 20] and result.stats["interface_changed"]
    assert not any(n.op_type == "Resize" for n in out.graph.node)
    ys = run(out, random_inputs(out, {"input": (1, 1, 20, 20)}))
    assert ys["output"].shape == (1, 10)
    with pytest.raises(Exception):
        run(out, random_inputs(out, {"input": (1, 1, 28, 28)}))


def test_flatten_before_gemm_tied_to_the_size_is_refused_with_the_op_and_reason():
    model = cases.load_zoo("vgg")
    with pytest.raises(UnsupportedModelError, match=r"Flatten.*\(Flatten\).*depends on the input size"):
        resize_input(to_graph(model), 0.5)


def test_hard_coded_reshape_is_refused():
    w = onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    shape = onnx.numpy_helper.from_array(np.array([1, 4 * 8 * 8], np.int64), "shape")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Reshape", ["c", "shape"], ["y"], name="flat")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 256])], [w, shape])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match=r"'flat' \(Reshape\).*depends on the input size"):
        resize_input(to_graph(model), 0.5)


def test_dense_output_is_resized_back_and_keeps_its_shape():
    model = cases.load_zoo("unet")
    shapes = {"input": cases.zoo_input_shape("unet")}
    result = resize_input(to_graph(model), 0.5, input_shapes=shapes)
    out = to_model(result.graph)
    onnx.checker.check_model(out, full_check=True)
    assert result.stats["resized_back"] == ["output"]
    assert _declared(out) == _declared(model)
    ys = run(out, random_inputs(out))
    assert ys["output"].shape == (2, 2, 32, 32)
    assert count_cost(out, shapes).flops == count_cost(model, {"input": (1, 3, 16, 16)}).flops


def test_ppocr_det_probability_map_is_resized_back():
    model = cases.load_ppocr("det")
    shapes = {"x": (1, 3, 128, 128)}  # det needs H, W multiples of 32 at the reduced size too
    result = resize_input(to_graph(model), 0.5, input_shapes=shapes)
    out = to_model(result.graph)
    assert result.stats["inputs"]["x"]["method"] == "averagepool"  # opset < 18, factor 2
    assert result.stats["pinned"] == ["x"] and len(result.stats["resized_back"]) == 1
    ys = run(out, random_inputs(out, shapes, batch=1))
    (y,) = ys.values()
    assert y.shape == (1, 1, 128, 128) and np.isfinite(y).all()
    assert count_cost(out, shapes).flops == count_cost(model, {"x": (1, 3, 64, 64)}).flops
    with pytest.raises(UnsupportedModelError, match="does not run at the reduced size"):
        resize_input(to_graph(model), 0.625, input_shapes=shapes)  # 80 is not a multiple of 32


def test_bad_arguments_are_pass_errors():
    model = cases.load_zoo("resnet_basic")
    with pytest.raises(PassError, match=r"\[resize_input\].*scale must be in \(0, 1\]"):
        resize_input(to_graph(model), 1.5)
    with pytest.raises(PassError, match="exactly one of"):
        resize_input(to_graph(model))
    with pytest.raises(PassError, match="at most"):
        resize_input(to_graph(model), size=(40, 40))
