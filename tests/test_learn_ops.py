"""The executor's op table, op by op, against ONNX Runtime (graph optimisations off).

Specification: each single-node model computes in torch what ORT computes, within 1e-5
relative, across the opset variants of the op (attributes that became inputs: Clip, Pad,
Squeeze/Unsqueeze, Split, Slice, Reduce*; Reshape's 0 / -1 / allowzero; Resize's modes,
coordinate transformations and nearest modes; pooling geometry incl. ceil_mode).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from smof_onnx.learn.executor import OnnxModule
from smof_onnx.learn.ops import OPS, validate_table
from tests.helpers import max_rel_err, run

TOL = 1e-5
RNG = np.random.default_rng(0)
torch.set_num_threads(1)


def X(*shape, dtype=np.float32):
    """A graph input fed with random data."""
    return ("in", RNG.standard_normal(shape).astype(dtype))


def C(values, dtype=None):
    """An initializer (shape tensors, scales, weights)."""
    return ("const", np.asarray(values, dtype=dtype))


def single(op_type, inputs, attrs=None, opset=17, n_out=1):
    """A one-node model; returns (model, feeds)."""
    names, graph_inputs, inits, feeds = [], [], [], {}
    for i, spec in enumerate(inputs):
        if spec is None:
            names.append("")
            continue
        kind, value = spec
        name = f"i{i}"
        names.append(name)
        if kind == "in":
            feeds[name] = value
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
        else:
            inits.append(numpy_helper.from_array(value, name))
    outs = [f"o{j}" for j in range(n_out)]
    node = helper.make_node(op_type, names, outs, name="node", **(attrs or {}))
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_empty_tensor_value_info(o) for o in outs],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    return model, feeds


def agree(op_type, inputs, attrs=None, opset=17, n_out=1):
    model, feeds = single(op_type, inputs, attrs, opset, n_out)
    ref = run(model, feeds)
    module = OnnxModule(model)
    with torch.no_grad():
        got = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    got = {n: g.numpy() for n, g in zip(module.output_names, got)}
    for name in list(ref):
        assert ref[name].shape == got[name].shape, f"{name}: shape {got[name].shape}, ORT {ref[name].shape}"
        if ref[name].size == 0:  # nothing to compare (and helpers.max_rel_err needs a max)
            ref.pop(name), got.pop(name)
            continue
        assert ref[name].dtype == got[name].dtype, f"{name}: dtype {got[name].dtype}, ORT {ref[name].dtype}"
        if ref[name].dtype.kind in "biu":
            assert np.array_equal(ref[name], got[name]), name
    err = max_rel_err(ref, got) if ref else 0.0
    assert err <= TOL, f"{op_type} opset {opset} {attrs}: rel err {err:.3g}"


def test_table_holds_only_onnx_ops():
    validate_table()
    assert {"Conv", "Resize", "Pad", "Clip", "Reshape", "Gemm"} <= set(OPS)


# ---------------------------------------------------------------- Reshape

@pytest.mark.parametrize("shape", [[0, -1], [-1, 3, 2], [0, 0, -1], [4, 6], [2, 3, 2, 2]])
@pytest.mark.parametrize("opset", [11, 14, 21])
def test_reshape(shape, opset):
    agree("Reshape", [X(2, 3, 4), C(shape, np.int64)], opset=opset)


def test_reshape_allowzero_keeps_zero_dims():
    agree("Reshape", [X(2, 0, 3), C([0, 4], np.int64)], {"allowzero": 1}, opset=14)
    agree("Reshape", [X(2, 3), C([3, 2], np.int64)], {"allowzero": 1}, opset=14)


# ---------------------------------------------------------------- Resize / Upsample

COORDS = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def _resize_inputs(opset, scales=None, sizes=None):
    empty = C(np.zeros(0, np.float32))
    sc = C(scales, np.float32) if scales is not None else (empty if opset < 13 else None)
    roi = empty if opset < 13 else None
    return [X(1, 2, 5, 7), roi, sc] + ([C(sizes, np.int64)] if sizes is not None else [])


RESIZE_TARGETS = [dict(scales=[1, 1, 2.0, 2.0]), dict(scales=[1, 1, 1.5, 0.6]),
                  dict(scales=[1, 1, 0.5, 0.5]), dict(sizes=[1, 2, 9, 4]), dict(sizes=[1, 2, 16, 21])]


@pytest.mark.parametrize("target", RESIZE_TARGETS, ids=lambda t: str(t))
@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("nearest", NEAREST)
def test_resize_nearest(target, coord, nearest):
    agree("Resize", _resize_inputs(13, **target),
          {"mode": "nearest", "coordinate_transformation_mode": coord, "nearest_mode": nearest}, opset=13)


@pytest.mark.parametrize("target", RESIZE_TARGETS, ids=lambda t: str(t))
@pytest.mark.parametrize("coord", COORDS + ["half_pixel_symmetric"])
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_linear_and_cubic(target, coord, mode):
    agree("Resize", _resize_inputs(19, **target), {"mode": mode, "coordinate_transformation_mode": coord},
          opset=19)


@pytest.mark.parametrize("target", [dict(sizes=[1, 2, 2, 3]), dict(sizes=[1, 2, 4, 4]), dict(scales=[1, 1, 0.5, 0.3]),
                                    dict(sizes=[1, 2, 1, 1]), dict(sizes=[1, 2, 9, 5])], ids=lambda t: str(t))
@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("exclude", [0, 1])
def test_resize_linear_antialias(target, coord, exclude):
    """Downsampling widens the triangle filter (the last target also upsamples one axis, where
    antialias changes nothing); taps past the edge go to the edge pixel unless excluded."""
    agree("Resize", _resize_inputs(18, **target),
          {"mode": "linear", "antialias": 1, "coordinate_transformation_mode": coord, "exclude_outside": exclude},
          opset=18)


def test_resize_antialias_cubic_is_refused_by_name():
    from smof_onnx.learn.ops_registry import Node
    from smof_onnx.learn.ops_nn import _resize_check

    reason = _resize_check(Node("r", "Resize", {"mode": "cubic", "antialias": 1}, 18, 1))
    assert reason is not None and "cubic" in reason


@pytest.mark.parametrize("exclude", [0, 1])
def test_resize_cubic_coefficients(exclude):
    agree("Resize", _resize_inputs(13, scales=[1, 1, 1.7, 0.8]),
          {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": exclude}, opset=13)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_opset11_defaults_and_sizes(mode):
    agree("Resize", _resize_inputs(11, scales=[1, 1, 2.0, 3.0]), {"mode": mode}, opset=11)
    agree("Resize", _resize_inputs(11, sizes=[1, 2, 10, 3]), {"mode": mode}, opset=11)
    agree("Resize", _resize_inputs(11, scales=[1, 1, 2.0, 2.0]),
          {"mode": mode, "coordinate_transformation_mode": "tf_half_pixel_for_nn"} if mode == "nearest"
          else {"mode": mode}, opset=11)


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
def test_resize_opset18_axes_and_aspect_policy(policy):
    agree("Resize", [X(1, 2, 5, 7), None, None, C([9, 4], np.int64)],
          {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": policy}, opset=18)
    agree("Resize", [X(1, 2, 5, 7), None, C([2.0, 3.0], np.float32)], {"mode": "nearest", "axes": [-2, -1]},
          opset=18)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 3, 1.5], [1, 1, 0.5, 0.6]])
def test_resize_opset10_and_upsample(mode, scales):
    agree("Resize", [X(1, 2, 5, 7), C(scales, np.float32)], {"mode": mode}, opset=10)
    if min(scales) >= 1:  # Upsample only scales up
        agree("Upsample", [X(1, 2, 5, 7), C(scales, np.float32)], {"mode": mode}, opset=9)
        agree("Upsample", [X(1, 2, 5, 7)], {"mode": mode, "scales": [float(s) for s in scales]}, opset=7)


# ---------------------------------------------------------------- Pad

@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_attribute_form(mode):
    agree("Pad", [X(1, 2, 4, 5)], {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "mode": mode, "value": 1.5}, opset=2)


@pytest.mark.parametrize("opset", [11, 13, 18, 19])
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_input_form(mode, opset):
    pads = C([0, 0, 1, 3, 0, 0, 2, 0], np.int64)
    agree("Pad", [X(1, 2, 4, 5), pads, C(2.5, np.float32)] if mode == "constant" else [X(1, 2, 4, 5), pads],
          {"mode": mode}, opset=opset)


def test_pad_negative_and_channel_pads():
    agree("Pad", [X(1, 2, 4, 5), C([0, 1, -1, 2, 0, 0, 1, -2], np.int64)], opset=13)
    agree("Pad", [X(2, 3, 4), C([1, 0, 2, 0, 1, 1], np.int64)], {"mode": "reflect"}, opset=13)


def test_pad_axes_and_wrap():
    agree("Pad", [X(1, 2, 4, 5), C([1, 2, 3, 1], np.int64), None, C([2, -1], np.int64)], opset=18)
    agree("Pad", [X(1, 2, 4, 5), C([0, 0, 2, 3, 0, 0, 1, 4], np.int64)], {"mode": "wrap"}, opset=19)


# ---------------------------------------------------------------- Clip

def test_clip_attribute_form():
    agree("Clip", [X(3, 8)], {"min": -0.5, "max": 0.7}, opset=6)
    agree("Clip", [X(3, 8)], {"max": 0.2}, opset=6)
    agree("Clip", [X(3, 8)], {}, opset=6)


@pytest.mark.parametrize("opset", [11, 12, 13])
def test_clip_input_form(opset):
    agree("Clip", [X(3, 8), C(-0.5, np.float32), C(0.7, np.float32)], opset=opset)
    agree("Clip", [X(3, 8), C(0.0, np.float32)], opset=opset)
    agree("Clip", [X(3, 8), None, C(0.3, np.float32)], opset=opset)
    agree("Clip", [X(3, 8), C(0.5, np.float32), C(-0.5, np.float32)], opset=opset)  # min > max


# ---------------------------------------------------------------- axes: attribute vs input

def test_squeeze_unsqueeze_by_opset():
    agree("Squeeze", [X(2, 1, 3, 1)], {"axes": [1, -1]}, opset=11)
    agree("Squeeze", [X(2, 1, 3, 1), C([1, -1], np.int64)], opset=13)
    agree("Squeeze", [X(2, 1, 3, 1)], opset=13)
    agree("Unsqueeze", [X(2, 3)], {"axes": [0, 3]}, opset=11)
    agree("Unsqueeze", [X(2, 3), C([-1, 0], np.int64)], opset=13)


def test_split_by_opset():
    agree("Split", [X(2, 7)], {"axis": 1, "split": [2, 5]}, opset=11, n_out=2)
    agree("Split", [X(2, 7), C([3, 4], np.int64)], {"axis": -1}, opset=13, n_out=2)
    agree("Split", [X(6, 2)], opset=13, n_out=3)
    agree("Split", [X(2, 7)], {"axis": 1, "num_outputs": 3}, opset=18, n_out=3)


def test_slice_by_opset():
    agree("Slice", [X(5, 6)], {"starts": [1, -4], "ends": [100, -1], "axes": [0, 1]}, opset=9)
    big = np.iinfo(np.int64).max
    agree("Slice", [X(5, 6), C([-1, 1], np.int64), C([-big, 5], np.int64), C([0, 1], np.int64),
                    C([-2, 2], np.int64)], opset=13)
    agree("Slice", [X(5, 6), C([4], np.int64), C([0], np.int64), C([-1], np.int64), C([-1], np.int64)],
          opset=13)


@pytest.mark.parametrize("op_type", ["ReduceMean", "ReduceMax", "ReduceSum", "ReduceL2", "ReduceProd"])
def test_reductions_by_opset(op_type):
    since = 13 if op_type == "ReduceSum" else 18
    agree(op_type, [X(2, 3, 4)], {"axes": [1, -1], "keepdims": 0}, opset=since - 1)
    agree(op_type, [X(2, 3, 4), C([1, -1], np.int64)], {"keepdims": 1}, opset=since)
    agree(op_type, [X(2, 3, 4)], opset=since)  # no axes: reduce all
    agree(op_type, [X(2, 3, 4)], {"noop_with_empty_axes": 1}, opset=since)


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_by_opset(op_type, opset):
    agree(op_type, [X(2, 3, 4, 5)], {"axis": 1}, opset=opset)
    agree(op_type, [X(2, 3, 4)], opset=opset)


# ---------------------------------------------------------------- Conv / ConvTranspose

CONV_CASES = [
    dict(x=(2, 4, 9, 8), w=(6, 4, 3, 3), a=dict(pads=[1, 0, 2, 1], strides=[2, 1])),
    dict(x=(2, 4, 9, 8), w=(4, 1, 3, 3), a=dict(group=4, dilations=[2, 1], pads=[2, 1, 2, 1])),
    dict(x=(2, 4, 9, 8), w=(6, 2, 3, 2), a=dict(group=2, auto_pad="SAME_UPPER", strides=[2, 2])),
    dict(x=(2, 4, 9, 8), w=(6, 4, 2, 3), a=dict(auto_pad="SAME_LOWER", strides=[2, 3])),
    dict(x=(2, 4, 9, 8), w=(6, 4, 3, 3), a=dict(auto_pad="VALID")),
    dict(x=(2, 3, 20), w=(5, 3, 5), a=dict(pads=[2, 1], dilations=[3])),
    dict(x=(1, 2, 5, 6, 7), w=(4, 2, 3, 1, 3), a=dict(pads=[1, 0, 1, 1, 0, 0], strides=[1, 2, 2])),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: str(c["a"]))
def test_conv(case):
    cout = case["w"][0]
    agree("Conv", [X(*case["x"]), C(RNG.standard_normal(case["w"]), np.float32),
                   C(RNG.standard_normal(cout), np.float32)], case["a"], opset=13)


CONVT_CASES = [
    dict(x=(2, 4, 5, 6), w=(4, 3, 3, 3), a=dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    dict(x=(2, 4, 5, 6), w=(4, 2, 2, 2), a=dict(strides=[2, 2], group=2)),
    dict(x=(2, 4, 5, 6), w=(4, 3, 3, 3), a=dict(strides=[2, 3], dilations=[2, 1], pads=[0, 2, 1, 0])),
    dict(x=(2, 4, 5, 6), w=(4, 3, 3, 3), a=dict(strides=[2, 2], output_shape=[10, 13])),
    dict(x=(2, 4, 5, 6), w=(4, 3, 3, 3), a=dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    dict(x=(2, 4, 5, 6), w=(4, 3, 4, 3), a=dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    dict(x=(2, 4, 7), w=(4, 3, 4), a=dict(strides=[3], output_padding=[2])),
]


@pytest.mark.parametrize("case", CONVT_CASES, ids=lambda c: str(c["a"]))
def test_conv_transpose(case):
    cout = case["w"][1] * case["a"].get("group", 1)
    agree("ConvTranspose", [X(*case["x"]), C(RNG.standard_normal(case["w"]), np.float32),
                            C(RNG.standard_normal(cout), np.float32)], case["a"], opset=13)


# ---------------------------------------------------------------- pooling (property test)

@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_pooling_geometry(data):
    op_type = data.draw(st.sampled_from(["MaxPool", "AveragePool"]))
    k = [data.draw(st.integers(1, 4)) for _ in range(2)]
    s = [data.draw(st.integers(1, 3)) for _ in range(2)]
    pads = [data.draw(st.integers(0, kk - 1)) for kk in k] + [data.draw(st.integers(0, kk - 1)) for kk in k]
    size = [data.draw(st.integers(1, 10)) for _ in range(2)]  # maps smaller than the window too
    attrs = {"kernel_shape": k, "strides": s, "pads": pads, "ceil_mode": data.draw(st.integers(0, 1))}
    if op_type == "AveragePool":
        attrs["count_include_pad"] = data.draw(st.integers(0, 1))
    elif data.draw(st.booleans()):
        attrs["dilations"] = [data.draw(st.integers(1, 2)) for _ in range(2)]
        if any((kk - 1) * d + 1 > sz for kk, d, sz in zip(k, attrs["dilations"], size)):
            attrs.pop("dilations")
    # ORT rejects a span of two strides or more below zero (a negative output size).
    dil = attrs.get("dilations", [1, 1])
    assume(all(sz + pads[i] + pads[i + 2] - (k[i] - 1) * dil[i] - 1 > -2 * s[i] for i, sz in enumerate(size)))
    agree(op_type, [X(1, 2, *size)], attrs, opset=19 if op_type == "MaxPool" else 11)


# A map smaller than the window (a 1-row text line after a resolution cut): ORT truncates
# the negative span toward zero, so it still gives one output row over the rows there are.
@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("ceil_mode", [0, 1])
@pytest.mark.parametrize("rows,kernel,stride", [(1, 2, 2), (1, 3, 2), (2, 3, 3), (1, 2, 1)])
def test_pooling_map_smaller_than_window(op_type, ceil_mode, rows, kernel, stride):
    attrs = {"kernel_shape": [kernel, 2], "strides": [stride, 2], "ceil_mode": ceil_mode}
    agree(op_type, [X(2, 3, rows, 6)], attrs, opset=19 if op_type == "MaxPool" else 11)
    if op_type == "AveragePool":  # ORT divides by the whole window here (ceil_mode 0 only)
        agree(op_type, [X(2, 3, rows, 6)], attrs | {"count_include_pad": 1}, opset=11)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
def test_pooling_auto_pad(op_type, auto_pad):
    agree(op_type, [X(1, 2, 7, 8)], {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": auto_pad}, opset=11)


def test_global_pools_and_1d_3d_pools():
    agree("GlobalAveragePool", [X(2, 3, 4, 5)])
    agree("GlobalMaxPool", [X(2, 3, 4, 5, 2)])
    agree("MaxPool", [X(2, 3, 9)], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]})
    agree("AveragePool", [X(1, 2, 5, 6, 7)], {"kernel_shape": [2, 3, 2], "strides": [2, 2, 2], "ceil_mode": 1})


# ---------------------------------------------------------------- everything else

MISC = [
    ("Gemm", [X(3, 5), C(RNG.standard_normal((4, 5)), np.float32), C(RNG.standard_normal(4), np.float32)],
     {"transB": 1, "alpha": 0.5, "beta": 2.0}, 13),
    ("Gemm", [X(5, 3), X(5, 4)], {"transA": 1}, 13),
    ("Gemm", [X(3, 5), X(5, 4), C(RNG.standard_normal((3, 1)), np.float32)], {}, 9),
    ("MatMul", [X(2, 3, 4, 5), X(5, 6)], {}, 13),
    ("Gather", [X(5, 6), C([[0, -1], [2, 3]], np.int64)], {"axis": 1}, 13),
    ("Gather", [X(5, 6), C(-2, np.int64)], {}, 13),
    ("Expand", [X(3, 1), C([2, 1, 4], np.int64)], {}, 13),
    ("Tile", [X(2, 3), C([2, 1], np.int64)], {}, 13),
    ("Range", [C(1, np.int64), C(10, np.int64), C(3, np.int64)], {}, 13),
    ("Range", [C(0.5, np.float32), C(3.0, np.float32), C(0.7, np.float32)], {}, 13),
    ("ConstantOfShape", [C([2, 3], np.int64)], {"value": numpy_helper.from_array(np.array([7], np.int64))}, 13),
    ("ConstantOfShape", [C([2, 3], np.int64)], {}, 13),
    ("Shape", [X(2, 3, 4, 5)], {"start": 1, "end": -1}, 15),
    ("Shape", [X(2, 3, 4, 5)], {}, 13),
    ("Size", [X(2, 3, 4)], {}, 13),
    ("Cast", [X(3, 4)], {"to": onnx.TensorProto.INT64}, 13),
    ("Where", [("in", RNG.standard_normal((3, 4)) > 0), X(3, 4), X(1, 4)], {}, 13),
    ("Equal", [C([1, 2, 3], np.int64), C([1, 0, 3], np.int64)], {}, 13),
    ("Div", [C([7, -7, 6], np.int64), C([2, 2, -4], np.int64)], {}, 13),
    ("Mod", [C([7, -7, 6], np.int64), C([3, 3, -4], np.int64)], {}, 13),
    ("Mod", [X(3, 4), C(0.7, np.float32)], {"fmod": 1}, 13),
    ("Pow", [("in", np.abs(RNG.standard_normal((3, 4))).astype(np.float32)), C(1.7, np.float32)], {}, 13),
    ("Max", [X(3, 4), X(4), X(1, 4)], {}, 13),
    ("Min", [X(3, 4), X(3, 1)], {}, 13),
    ("Sum", [X(3, 4), X(4), X(3, 4)], {}, 13),
    ("Einsum", [X(2, 3, 4), X(2, 4, 5)], {"equation": "bij,bjk->bik"}, 13),
    ("Flatten", [X(2, 3, 4, 5)], {"axis": 2}, 13),
    ("Flatten", [X(2, 3, 4, 5)], {"axis": 0}, 13),
    ("Flatten", [X(2, 3, 4, 5)], {"axis": -1}, 13),
    ("Transpose", [X(2, 3, 4)], {}, 13),
    ("Transpose", [X(2, 3, 4, 5)], {"perm": [0, 2, 3, 1]}, 13),
    ("Concat", [X(2, 3), X(2, 1)], {"axis": -1}, 13),
    ("PRelu", [X(2, 3, 4, 4), C(RNG.standard_normal((3, 1, 1)), np.float32)], {}, 13),
    ("LeakyRelu", [X(3, 4)], {"alpha": 0.2}, 13),
    ("Elu", [X(3, 4)], {"alpha": 0.7}, 13),
    ("Selu", [X(3, 4)], {}, 13),
    ("HardSigmoid", [X(3, 4)], {"alpha": 0.3, "beta": 0.4}, 13),
    ("HardSwish", [X(3, 40)], {}, 14),
    ("Sigmoid", [X(3, 40)], {}, 13),
    ("Tanh", [X(3, 40)], {}, 13),
    ("Softplus", [X(3, 40)], {}, 13),
    ("Erf", [X(3, 40)], {}, 13),
    ("Gelu", [X(3, 40)], {}, 20),
    ("Gelu", [X(3, 40)], {"approximate": "tanh"}, 20),
    ("LayerNormalization", [X(2, 3, 4), C(RNG.standard_normal(4), np.float32), C(RNG.standard_normal(4), np.float32)],
     {}, 17),
    ("LayerNormalization", [X(2, 3, 4), C(RNG.standard_normal((3, 4)), np.float32)], {"axis": 1, "epsilon": 1e-3}, 17),
    ("InstanceNormalization", [X(2, 3, 4, 5), C(RNG.standard_normal(3), np.float32),
                               C(RNG.standard_normal(3), np.float32)], {}, 13),
    ("BatchNormalization", [X(2, 3, 4, 5)] + [C(RNG.standard_normal(3), np.float32) for _ in range(3)]
     + [C(RNG.random(3) + 0.5, np.float32)], {"epsilon": 1e-3}, 15),
    ("DepthToSpace", [X(1, 8, 2, 3)], {"blocksize": 2, "mode": "DCR"}, 13),
    ("DepthToSpace", [X(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}, 13),
    ("SpaceToDepth", [X(1, 2, 4, 6)], {"blocksize": 2}, 13),
    ("CumSum", [X(3, 4), C(1, np.int64)], {"exclusive": 1, "reverse": 1}, 14),
    ("ArgMax", [X(3, 4)], {"axis": 1, "keepdims": 0}, 13),
    ("Identity", [X(3, 4)], {}, 13),
    ("Dropout", [X(3, 4)], {}, 13),
]


@pytest.mark.parametrize("op_type,inputs,attrs,opset", MISC, ids=[f"{m[0]}-{i}" for i, m in enumerate(MISC)])
def test_misc_ops(op_type, inputs, attrs, opset):
    agree(op_type, inputs, attrs, opset)
