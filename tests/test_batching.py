"""smof_onnx.batching: a fixed-batch model is freed for training only when ONNX Runtime shows
the freed copy computes, sample by sample, what the original computes."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser

from smof_onnx.batching import Batching, fixed_batch, free_batch
from tests.helpers import run

# an export at batch 1: the flatten before the head bakes the batch into Reshape's shape
FLATTEN_HEAD = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 2, 4, 4] x) => (float[1, 3] y) <int64[2] flat = {1, -1}> {
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    r = Relu(c)
    f = Reshape(r, flat)
    y = MatMul(f, head)
}
"""

# batch 1, but the Reshape reads a tensor whose axis 0 is the channels (after a Transpose):
# "copy axis 0" would mix samples, and the check must catch it
TRANSPOSED_FLATTEN = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 2, 4] x) => (float[1, 8] y) <int64[2] flat = {1, 8}> {
    t = Transpose <perm = [1, 0, 2]> (x)
    y = Reshape(t, flat)
}
"""

DYNAMIC = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 2, 4, 4] x) => (float[N, 4, 4, 4] y) {
    y = Conv <pads = [1, 1, 1, 1]> (x, w)
}
"""


WEIGHTS = {"w": [4, 2, 3, 3], "head": [64, 3]}


def _model(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    used = {i for n in model.graph.node for i in n.input}
    for name, shape in WEIGHTS.items():
        if name in used:
            arr = rng.standard_normal(shape).astype(np.float32)
            model.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    onnx.checker.check_model(model)
    return model


def _samples(model: onnx.ModelProto, n: int) -> dict[str, np.ndarray]:
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    return {inp.name: np.random.default_rng(1).standard_normal([n, *shape]).astype(np.float32)}


def test_fixed_batch_reads_the_static_axis_0_shared_by_every_input():
    assert fixed_batch(_model(FLATTEN_HEAD)) == 1
    assert fixed_batch(_model(DYNAMIC)) is None


def test_fixed_batch_is_none_when_inputs_disagree_on_axis_0():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 4] a, float[3, 4] b) => (float[3, 4] y) { y = Add(a, b) }
    """)
    assert fixed_batch(model) is None


def test_a_batch_1_flatten_head_is_freed_and_runs_any_batch_exactly():
    model = _model(FLATTEN_HEAD)
    before = model.SerializeToString()
    data = _samples(model, 5)
    batching = free_batch(model, data)
    assert batching.free and batching.fixed == 1
    assert model.SerializeToString() == before  # the user's model is not touched
    together = run(batching.model, data)["y"]
    apart = np.concatenate([run(model, {"x": data["x"][i:i + 1]})["y"] for i in range(5)])
    assert together.shape == (5, 3)
    np.testing.assert_allclose(together, apart, rtol=1e-5, atol=1e-6)
    dims = batching.model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [2, 4, 4]
    assert batching.batch_size(64) == 64
    assert batching.report() == {"model_batch": 1, "freed": True}


def test_a_rewrite_that_would_mix_samples_is_refused_and_training_keeps_the_model_batch():
    model = _model(TRANSPOSED_FLATTEN)
    batching = free_batch(model, _samples(model, 4))
    assert not batching.free and batching.model is model
    assert "differs" in batching.reason
    assert batching.batch_size(64) == 1
    assert batching.report()["freed"] is False and batching.report()["reason"] == batching.reason


def test_too_few_samples_to_check_keeps_the_model_batch():
    model = _model(FLATTEN_HEAD)
    batching = free_batch(model, _samples(model, 1))
    assert not batching.free and "fewer than 2 samples" in batching.reason


def test_a_model_with_a_free_batch_is_returned_as_is():
    model = _model(DYNAMIC)
    batching = free_batch(model, _samples(model, 3))
    assert batching == Batching(model, None, True) and batching.report() is None


def test_a_shape_shared_with_another_reshape_is_copied_not_edited():
    model = _model(FLATTEN_HEAD)
    # a second reader of `flat` that must keep {1, -1}: the rewrite adds a fresh initializer
    model.graph.node.append(onnx.helper.make_node("Reshape", ["x", "flat"], ["x_flat"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info("x_flat", onnx.TensorProto.FLOAT, [1, 32]))
    batching = free_batch(model, _samples(model, 4))
    assert batching.free
    inits = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in batching.model.graph.initializer}
    assert inits["flat"] == [1, -1]
    assert sorted(v for k, v in inits.items() if k.startswith("flat_")) == [[0, -1], [0, -1]]
