"""passes.fuse_batchnorm: an inference BatchNormalization after a Conv/ConvTranspose (its only
reader) disappears into the conv's weights and bias, exactly, with the BN's output name kept;
everything else is left alone with a reason."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from smof_onnx.passes.fuse_batchnorm import fuse_batchnorm
from smof_onnx.passes.graph import to_graph, to_model
from tests.helpers import assert_equivalent, conv_weights, op_counts

F32 = TensorProto.FLOAT


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(nodes, inits, x_shape, y_name="Y", opset=17, dtype=F32, extra_outputs=()):
    unknown = [None] * len(x_shape)  # same rank as X, dims left to the runtime
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", dtype, x_shape)],
        [helper.make_tensor_value_info(n, dtype, unknown) for n in (y_name, *extra_outputs)], inits)
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def _bn_params(rng, c, prefix="bn", dtype=np.float32):
    return [_init(f"{prefix}_g", rng.uniform(-2, 2, c).astype(dtype)),
            _init(f"{prefix}_b", rng.uniform(-1, 1, c).astype(dtype)),
            _init(f"{prefix}_m", rng.uniform(-1, 1, c).astype(dtype)),
            _init(f"{prefix}_v", rng.uniform(0.05, 3, c).astype(dtype))]


def _conv_bn(op="Conv", nd=2, cin=4, cout=6, group=1, k=3, bias=True, eps=None, opset=17, seed=0,
             stride=1, bn_outputs=1, dtype=np.float32):
    """X -> op(W[, B]) -> c -> BatchNormalization -> Y."""
    rng = np.random.default_rng(seed)
    ks = [k] * nd
    wshape = [cout, cin // group, *ks] if op == "Conv" else [cin, cout // group, *ks]
    inits = [_init("W", rng.standard_normal(wshape).astype(dtype))]
    ins = ["X", "W"]
    if bias:
        inits.append(_init("B", rng.standard_normal(cout).astype(dtype)))
        ins.append("B")
    conv = helper.make_node(op, ins, ["c"], name="conv", group=group, kernel_shape=ks, strides=[stride] * nd,
                            pads=[k // 2] * (2 * nd))
    inits += _bn_params(rng, cout, dtype=dtype)
    attrs = {} if eps is None else {"epsilon": eps}
    outs = ["Y"] + [f"bn_out{i}" for i in range(1, bn_outputs)]
    bn = helper.make_node("BatchNormalization", ["c", "bn_g", "bn_b", "bn_m", "bn_v"], outs, name="bn", **attrs)
    tt = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return _model([conv, bn], inits, [2, cin] + [5] * nd, opset=opset, dtype=tt)


def _run(model):
    result = fuse_batchnorm(to_graph(model))
    return result, to_model(result.graph)


def _assert_folded(before, after, result):
    assert result.changed
    assert "BatchNormalization" not in op_counts(after)
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
    assert result.stats["folded"] == [{"bn": "bn", "into": "conv"}]
    assert_equivalent(before, after)


@pytest.mark.parametrize("opset", [11, 12, 13, 14, 15, 17, 19, 21])
def test_folds_conv_bn_for_every_opset(opset):
    before = _conv_bn(opset=opset)
    result, after = _run(before)
    _assert_folded(before, after, result)
    conv = after.graph.node[0]
    assert conv.name == "conv" and conv.output[0] == "Y"


def test_opset11_bn_listing_statistics_outputs_is_training_mode_and_refused():
    """Before opset 14, the optional outputs select training mode (batch statistics) even when
    nothing reads them; ORT computes something else than the folded conv would."""
    model = _conv_bn(opset=11, bn_outputs=5)
    result = _refusal(model)
    assert "training mode" in result.stats["refused"][0]["reason"]


def test_conv_without_bias_gets_one_and_default_epsilon_is_used():
    before = _conv_bn(bias=False, eps=None)
    result, after = _run(before)
    _assert_folded(before, after, result)
    assert len(after.graph.node[0].input) == 3


def test_folded_weights_follow_the_formula():
    before = _conv_bn(eps=1e-3)
    _, after = _run(before)
    inits = {i.name: numpy_helper.to_array(i) for i in before.graph.initializer}
    s = inits["bn_g"].astype(np.float64) / np.sqrt(inits["bn_v"].astype(np.float64) + 1e-3)
    w = conv_weights(after)["conv"]
    np.testing.assert_allclose(w, inits["W"] * s[:, None, None, None], rtol=1e-6)
    b = numpy_helper.to_array({i.name: i for i in after.graph.initializer}[after.graph.node[0].input[2]])
    np.testing.assert_allclose(b, (inits["B"] - inits["bn_m"]) * s + inits["bn_b"], rtol=1e-5, atol=1e-6)


def test_float16_weights_are_refused_since_folding_would_round():
    result = _refusal(_conv_bn(dtype=np.float16))
    assert "float16" in result.stats["refused"][0]["reason"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(["Conv", "ConvTranspose"]), nd=st.integers(1, 3), group=st.integers(1, 3),
       cin_per=st.integers(1, 3), cout_per=st.integers(1, 3), k=st.integers(1, 3), bias=st.booleans(),
       eps=st.floats(1e-6, 1e-1), stride=st.integers(1, 2), opset=st.sampled_from([11, 13, 14, 15, 18, 21]),
       seed=st.integers(0, 2**16))
def test_property_fold_is_exact(op, nd, group, cin_per, cout_per, k, bias, eps, stride, opset, seed):
    """Grouped, depthwise (cin_per = 1), 1-D/2-D/3-D, Conv and ConvTranspose, any eps and opset."""
    before = _conv_bn(op, nd, group * cin_per, group * cout_per, group, k, bias, eps, opset, seed, stride)
    result, after = _run(before)
    _assert_folded(before, after, result)
    onnx.checker.check_model(after, full_check=True)


def test_paddle_form_conv_then_bias_add_then_bn():
    """paddle2onnx: ConvTranspose -> Add([1,C,1,1]) -> BatchNormalization (PP-OCR det)."""
    rng = np.random.default_rng(3)
    inits = [_init("W", rng.standard_normal([4, 6, 2, 2]).astype(np.float32)),
             _init("cb", rng.standard_normal([1, 6, 1, 1]).astype(np.float32)), *_bn_params(rng, 6)]
    nodes = [helper.make_node("ConvTranspose", ["X", "W"], ["c"], name="conv", strides=[2, 2]),
             helper.make_node("Add", ["c", "cb"], ["a"], name="bias_add"),
             helper.make_node("BatchNormalization", ["a", "bn_g", "bn_b", "bn_m", "bn_v"], ["Y"], name="bn")]
    before = _model(nodes, inits, [1, 4, 5, 5], opset=12)
    result, after = _run(before)
    assert op_counts(after) == {"ConvTranspose": 1}
    assert result.stats["folded"] == [{"bn": "bn", "into": "conv", "via": ["bias_add"]}]
    assert_equivalent(before, after)


def test_shared_weight_is_cloned_not_edited_twice():
    rng = np.random.default_rng(4)
    inits = [_init("W", rng.standard_normal([4, 4, 3, 3]).astype(np.float32)),
             *_bn_params(rng, 4, "p"), *_bn_params(rng, 4, "q")]
    nodes = [helper.make_node("Conv", ["X", "W"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "p_g", "p_b", "p_m", "p_v"], ["b1"], name="bn1"),
             helper.make_node("Conv", ["b1", "W"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", "q_g", "q_b", "q_m", "q_v"], ["Y"], name="bn2")]
    before = _model(nodes, inits, [1, 4, 6, 6])
    result, after = _run(before)
    assert op_counts(after) == {"Conv": 2}
    assert len({n.input[1] for n in after.graph.node}) == 2
    assert len(result.stats["folded"]) == 2
    assert_equivalent(before, after)


def _refusal(model):
    result, after = _run(model)
    assert not result.changed
    assert op_counts(after) == op_counts(model)
    return result


def test_training_mode_is_refused():
    model = _conv_bn(opset=15)
    model.graph.node[1].attribute.append(helper.make_attribute("training_mode", 1))
    result = _refusal(model)
    assert "training mode" in result.stats["refused"][0]["reason"]


def test_conv_output_read_elsewhere_is_refused():
    model = _conv_bn()
    model.graph.node.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    model.graph.output.append(helper.make_tensor_value_info("r", F32, [None] * 4))
    result = _refusal(model)
    assert result.stats["refused"][0]["node"] == "bn"
    assert_equivalent(model, to_model(result.graph))


def test_conv_output_that_is_a_graph_output_is_refused():
    model = _conv_bn()
    model.graph.output.append(helper.make_tensor_value_info("c", F32, [None] * 4))
    result = _refusal(model)
    assert "graph output" in result.stats["refused"][0]["reason"]


def test_runtime_weight_is_refused():
    model = _conv_bn()
    w = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info("W", F32, list(w.dims)))
    del model.graph.initializer[0]
    result = _refusal(model)
    assert "weight" in result.stats["refused"][0]["reason"]


def test_bn_after_a_non_conv_is_kept_with_reason():
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Relu", ["X"], ["r"], name="relu"),
             helper.make_node("BatchNormalization", ["r", "bn_g", "bn_b", "bn_m", "bn_v"], ["Y"], name="bn")]
    model = _model(nodes, _bn_params(rng, 3), [1, 3, 4, 4])
    result = _refusal(model)
    assert result.stats["kept"] == [{"node": "bn", "reason": "input comes from Relu, not a Conv/ConvTranspose"}]
    assert result.stats["refused"] == []


def test_ppocr_cls_loses_every_batchnorm():
    from tests import cases
    from models import ppocr
    if not (ppocr.ppocr_dir() / ppocr.PPOCR_FILES["cls"]).is_file():
        pytest.skip("PP-OCR cls is not cached (models.ppocr.ppocr_path fetches it)")
    from smof_onnx.passes.constants_to_initializers import constants_to_initializers
    before = cases.load_ppocr("cls")
    graph = constants_to_initializers(to_graph(before)).graph
    result = fuse_batchnorm(graph)
    after = to_model(result.graph)
    assert "BatchNormalization" not in op_counts(after)
    assert len(result.stats["folded"]) == 35 and not result.stats["refused"]
    assert_equivalent(before, after, shapes=cases.ppocr_feed_shapes("cls"))


def test_ppocr_det_paddle_convtranspose_bias_add_bn_folds():
    """det has ConvTranspose -> Add -> BN. Its sigmoid output saturates on random inputs (a 1e-7
    input perturbation moves it by 4% relative), so the logits are compared instead."""
    from models import ppocr
    from smof_onnx.passes.constants_to_initializers import constants_to_initializers
    from tests import cases
    if not (ppocr.ppocr_dir() / ppocr.PPOCR_FILES["det"]).is_file():
        pytest.skip("PP-OCR det is not cached (models.ppocr.ppocr_path fetches it)")
    before = cases.load_ppocr("det")
    sigmoid = next(n for n in before.graph.node if n.op_type == "Sigmoid")
    before.graph.node.remove(sigmoid)
    del before.graph.output[:]
    before.graph.output.append(helper.make_tensor_value_info(sigmoid.input[0], F32, [None] * 4))
    result = fuse_batchnorm(constants_to_initializers(to_graph(before)).graph)
    after = to_model(result.graph)
    assert "BatchNormalization" not in op_counts(after)
    assert sum("via" in e for e in result.stats["folded"]) == 1 and len(result.stats["folded"]) == 3
    assert_equivalent(before, after, shapes=cases.ppocr_feed_shapes("det"))
