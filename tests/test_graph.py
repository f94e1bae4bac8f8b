"""passes.graph helpers: attributes read as Python values with strings decoded."""
from __future__ import annotations

import onnx
import onnx.helper as oh

from smof_onnx.passes.graph import node_attributes


def test_node_attributes_decode_strings_and_keep_numbers():
    node = oh.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2], group=4,
                        name="c")
    tags = oh.make_node("Custom", ["x"], ["y"], tags=["a", "bc"], scale=0.5)
    assert node_attributes(node) == {"auto_pad": "SAME_UPPER", "strides": [2, 2], "group": 4}
    assert node_attributes(tags) == {"tags": ["a", "bc"], "scale": 0.5}
    assert node_attributes(oh.make_node("Relu", ["x"], ["y"])) == {}


# ------------------------------------------------------------------------ written value_info is true

def _observed_shapes(model, feeds):
    """Every intermediate tensor's real shape under ONNX Runtime."""
    from tests.oracle_structure import all_values
    return {k: v.shape for k, v in all_values(model, [feeds])[0].items()}


def value_info_lies(model, batches=(1, 3), shapes=None) -> list[str]:
    """Every value_info entry of ``model`` that contradicts ONNX Runtime at the given batch sizes:
    wrong rank, a 0 or negative dim, or a concrete dim that differs from the real one.
    ``shapes``: input shapes (their batch is replaced) where the inputs have symbolic dims."""
    import numpy as np

    from tests.helpers import random_inputs

    shapes_in = dict(shapes or {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                                for i in model.graph.input})
    observed, dtypes = [], {}
    for b in batches:
        feeds = random_inputs(model, {k: [b, *v[1:]] for k, v in shapes_in.items()}, seed=0)
        observed.append(_observed_shapes(model, feeds))
    np_types = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64}
    bad = []
    for vi in model.graph.value_info:
        tt = vi.type.tensor_type
        if vi.name not in observed[0]:
            continue
        real = [o[vi.name] for o in observed]
        if tt.elem_type in np_types:
            dtypes[vi.name] = tt.elem_type
        if not tt.HasField("shape"):
            continue
        dims = tt.shape.dim
        if len(dims) != len(real[0]):
            bad.append(f"{vi.name}: rank {len(dims)}, real shape {real[0]}")
            continue
        for i, d in enumerate(dims):
            if d.HasField("dim_value"):
                if d.dim_value <= 0 or any(r[i] != d.dim_value for r in real):
                    bad.append(f"{vi.name}: dim {i} is {d.dim_value}, real {[r[i] for r in real]}")
            elif d.HasField("dim_param") and not d.dim_param:
                bad.append(f"{vi.name}: dim {i} has an empty name")
    return bad


def _free_batch_model():
    """Conv(pads) -> Relu -> Conv(zero border, 1 zero filter) -> GAP -> Flatten -> Gemm, batch 'N',
    with exporter-style value_info for every intermediate (as torch's exporters write)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    w2[:, :, 0, :] = 0      # a kernel side the cut removes (a crop appears)
    w2[:, :, :, 0] = 0
    w2[2] = 0               # a filter the cut removes
    w3 = rng.standard_normal((6, 5)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"], pads=[0, 0, 0, 0]),
             helper.make_node("GlobalAveragePool", ["c"], ["d"]),
             helper.make_node("Flatten", ["d"], ["e"]),
             helper.make_node("Gemm", ["e", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("w2", w2), ("w3", w3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def test_value_info_lies_sees_a_wrong_dim_and_a_wrong_rank():
    """The checker below must be able to fail."""
    m = _free_batch_model()
    assert value_info_lies(m) == []
    m.graph.value_info[0].type.tensor_type.shape.dim[1].dim_value = 0
    del m.graph.value_info[1].type.tensor_type.shape.dim[:]
    m.graph.value_info[1].type.tensor_type.shape.dim.add()  # rank 1
    assert len(value_info_lies(m)) == 2


def test_the_cut_writes_value_info_that_is_true_or_absent():
    """Downstream converters read value_info: every entry of the cut model is symbolic or equals
    what ONNX Runtime computes at batch 1 and 3 (no 0 / -1 dims, no rank left from before a crop)."""
    from smof_onnx import api

    model = _free_batch_model()
    cut, _ = api.cut(model, input_shapes={"x": [2, 3, 8, 8]})
    assert [d.dim_param for d in cut.graph.input[0].type.tensor_type.shape.dim][:1] == ["N"]
    assert len(cut.graph.node) >= len(model.graph.node)  # something was cut: a crop Slice appeared
    assert value_info_lies(cut) == []


def test_the_cut_of_random_free_batch_graphs_writes_true_value_info():
    from smof_onnx import api
    from tests import graphgen

    checked = 0
    for seed in range(60):
        case = graphgen.from_seed(seed)
        if not case.free_batch:
            continue
        cut, _ = api.cut(case.model, input_shapes=case.shapes)
        assert value_info_lies(cut) == [], f"seed {seed}: {graphgen.describe(case)}"
        checked += 1
    assert checked >= 15


def test_the_cut_of_ppocr_cls_writes_true_value_info():
    """PP-OCR cls (Paddle export: -1 batch, symbolic spatial dims) used to come out with 176
    value_info entries with 0-sized spatial dims and a -1 batch."""
    from models import ppocr
    from smof_onnx import api
    from tests import cases

    model = cases.load_ppocr("cls")
    shape = list(ppocr.PPOCR_SHAPES["cls"])
    cut, _ = api.cut(model, input_shapes={ppocr.INPUT_NAME: shape})
    assert len(cut.graph.value_info) > 100  # inferred, not merely dropped
    assert value_info_lies(cut, shapes={ppocr.INPUT_NAME: shape}) == []
