"""FLOPs and parameter counts on concrete shapes.

Rules (the numbers every report and every budget use):

- FLOPs = 2 x MACs of the four weighted ops; nothing else is counted (activations,
  pooling, elementwise ops, Resize ... are memory-bound and small):

  * ``Conv``          W[Cout, Cin/g, k...], output Y[N, Cout, o...]:
                      MACs = N * Cout * prod(o) * (Cin/g) * prod(k)
  * ``ConvTranspose`` W[Cin, Cout/g, k...], input X[N, Cin, i...]:
                      MACs = N * Cin * prod(i) * (Cout/g) * prod(k)
                      (every input element meets Cout/g * prod(k) weights)
  * ``Gemm``          A'[M, K] x B'[K, N] (after transA / transB): MACs = M * K * N
  * ``MatMul``        any operands (weights or activations, batched, 1-D with the
                      numpy promotion rules): MACs = prod(output shape) * K, where K
                      is the contracted axis (the last axis of A).

  Bias adds (Conv/Gemm ``B``, Gemm's ``beta*C``) are *not* counted: they are one add
  per output element, negligible next to the MACs, and counting them would make a
  layer's FLOPs depend on whether an exporter fused its bias.
- Params: elements of the float initializers (and Constant-node values) read by
  the weighted ops, each tensor counted once even when several nodes share it. A
  layer's ``params`` counts the float constants it reads itself.
- Shapes come from ONNX shape inference on a copy with static input shapes
  (:func:`smof_onnx.passes.graph.with_static_shapes`). Where inference cannot tell a shape a
  layer needs, the model is run once under ONNX Runtime on zero inputs to read it;
  only when that fails too is a :class:`ModelError` raised naming the node.
- Symbolic batch dims count as 1 unless ``input_shapes`` says otherwise; any other
  symbolic input dim needs ``input_shapes``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import onnx
import onnx_graphsurgeon as gs

from ..base import ModelError
from ..graph import graph_input_shapes, node_attributes, shapes_by_running, to_model, with_static_shapes

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


@dataclasses.dataclass(frozen=True)
class LayerCost:
    name: str
    op: str
    kernel: tuple[int, ...]
    in_channels: int
    out_channels: int
    groups: int
    flops: int
    params: int
    output_shape: tuple[int, ...]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["kernel"], d["output_shape"] = list(self.kernel), list(self.output_shape)
        return d


@dataclasses.dataclass(frozen=True)
class ModelCost:
    flops: int
    params: int
    layers: list[LayerCost]

    def layer(self, name: str) -> LayerCost | None:
        for layer in self.layers:
            if layer.name == name:
                return layer
        return None

    def to_dict(self) -> dict:
        return {"flops": self.flops, "params": self.params, "layers": [lc.to_dict() for lc in self.layers]}


def count_cost(model: onnx.ModelProto | gs.Graph,
               input_shapes: Mapping[str, Sequence[int]] | None = None) -> ModelCost:
    """Count FLOPs (2 x MACs) and params of ``model`` with concrete ``input_shapes``."""
    if isinstance(model, gs.Graph):
        model = to_model(model)
    shapes_in = graph_input_shapes(model, input_shapes, default_dim=1)
    inferred = with_static_shapes(model, shapes_in)
    shapes = _known_shapes(inferred)
    consts = _constants(model)
    nodes = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS]

    missing = {t for n in nodes for t in _needed(n) if t not in shapes}
    if missing:
        shapes.update(shapes_by_running(inferred, shapes_in, sorted(missing)))

    layers, counted, total_params = [], set(), 0
    for idx, node in enumerate(nodes):
        name = node.name or f"{node.op_type}_{idx}"
        for t in _needed(node):
            if t not in shapes:
                raise ModelError(f"count_cost: cannot tell the shape of '{t}' at node '{name}' "
                                 "(shape inference and ONNX Runtime both failed); give --input-shape")
        layer_params = 0
        for t in node.input:
            if t in consts and consts[t][1]:
                layer_params += consts[t][0]
                if t not in counted:
                    counted.add(t)
                    total_params += consts[t][0]
        layers.append(_layer(node, name, shapes, layer_params))
    return ModelCost(flops=sum(lc.flops for lc in layers), params=total_params, layers=layers)


def _needed(node: onnx.NodeProto) -> list[str]:
    """The tensors whose shapes a layer's count needs."""
    if node.op_type == "Conv":
        return [node.input[1], node.output[0]]
    if node.op_type == "ConvTranspose":
        return [node.input[0], node.input[1], node.output[0]]
    return [node.input[0], node.input[1], node.output[0]]


def _layer(node: onnx.NodeProto, name: str, shapes: dict[str, tuple[int, ...]], params: int) -> LayerCost:
    attrs = node_attributes(node)
    out = shapes[node.output[0]]
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        w = shapes[node.input[1]]
        group = int(attrs.get("group", 1))
        kernel = tuple(int(k) for k in w[2:])
        if op == "Conv":
            cout, cin = w[0], w[1] * group
            macs = out[0] * cout * math.prod(out[2:]) * w[1] * math.prod(kernel)
        else:
            x = shapes[node.input[0]]
            cin, cout = w[0], w[1] * group
            macs = x[0] * cin * math.prod(x[2:]) * w[1] * math.prod(kernel)
        return LayerCost(name, op, kernel, int(cin), int(cout), group, 2 * int(macs), params, tuple(out))
    a, b = shapes[node.input[0]], shapes[node.input[1]]
    if op == "Gemm":
        m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
        n = b[0] if attrs.get("transB", 0) else b[1]
        macs = m * k * n
        return LayerCost(name, op, (), int(k), int(n), 1, 2 * int(macs), params, tuple(out))
    k = a[-1]
    n = b[-1] if len(b) > 1 else 1
    macs = math.prod(out) * k
    return LayerCost(name, op, (), int(k), int(n), 1, 2 * int(macs), params, tuple(out))


def _known_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tt.shape.dim
        if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = tuple(int(d) for d in a.t.dims)
    return shapes


def _constants(model: onnx.ModelProto) -> dict[str, tuple[int, bool]]:
    """name -> (element count, is float) of every initializer and Constant-node value."""
    out = {i.name: (math.prod(i.dims), i.data_type in _FLOAT_TYPES) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = (math.prod(a.t.dims), a.t.data_type in _FLOAT_TYPES)
    return out
