"""Tensor shapes for the channel analysis: ONNX shape inference, then one ONNX Runtime probe.

``tensor_shapes(graph, input_shapes)`` returns ``(shapes, unknown)``: dims per tensor name
(ints; symbolic or unknown dims as names or None) and, for each node output whose shape
is still not fully known, the reason why (the freeze reasons quote it).

1. ONNX shape inference with data propagation (:func:`smof_onnx.passes.graph.infer_graph_shapes`),
   graph inputs fixed to ``input_shapes``.
2. When every graph input has a concrete shape (given or declared) and inference leaves
   some tensor unknown (Paddle's Shape -> Cast -> Slice -> Concat -> Reshape defeats it),
   the model is run once under ONNX Runtime on zero inputs of those shapes with the
   unknown tensors as extra outputs (:func:`smof_onnx.passes.graph.shapes_by_running`).

A shape read from a run holds for every input *of those shapes* only if it does not
depend on input values. So the probe is asked only for tensors whose shape is
*shape-determined*: graph inputs and constants are; a node output is when every input
is, the op is a known one, and each input whose values set the output shape (a
Reshape's target, Slice's starts, Resize's sizes, TopK's k, ...) is *shape-valued*:
computed from constants and Shape / Size only. NonZero, Unique, Loop, custom ops and
any op not listed here make their outputs value-dependent, and such a shape stays unknown.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import onnx_graphsurgeon as gs

from ..graph import infer_graph_shapes, shapes_by_running, to_model

# Ops whose output shape follows from their input shapes and attributes alone.
SHAPE_ONLY = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Tanh", "HardSwish", "Elu", "Selu", "Celu", "Gelu", "Mish", "Softsign",
    "ThresholdedRelu", "Abs", "Neg", "Sqrt", "Sign", "Erf", "Floor", "Ceil", "Round", "Sin", "Cos", "Atan",
    "Identity", "Cast", "CastLike", "Dropout", "Clip", "Sigmoid", "HardSigmoid", "Exp", "Softplus", "Log",
    "Reciprocal", "Not", "IsNaN", "IsInf", "Shrink",
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "BitShift",
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "BatchNormalization", "InstanceNormalization",
    "LayerNormalization", "GroupNormalization", "LRN", "Softmax", "LogSoftmax", "Hardmax",
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "Concat", "Transpose", "Flatten", "DepthToSpace", "SpaceToDepth", "Gather", "GatherElements", "GatherND",
    "ArgMax", "ArgMin", "CumSum", "Trilu", "Shape", "Size",
})
# Ops whose output shape also depends on the *values* of these inputs.
VALUE_SHAPED: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 3), "Resize": (1, 2, 3),
    "Upsample": (1,), "Split": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "TopK": (1,), "OneHot": (1,),
    "ConstantOfShape": (0,), "Range": (0, 1, 2),
    **{op: (1,) for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
                           "ReduceSumSquare", "ReduceProd", "ReduceLogSum", "ReduceLogSumExp")},
}
# Ops whose output values are not a function of their inputs.
RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
                    "Multinomial"})


def _dims(model) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                 for d in tt.shape.dim)
    return out


def _static(dims: tuple | None) -> bool:
    return dims is not None and all(isinstance(d, int) and d >= 0 for d in dims)


def shape_determined(graph: gs.Graph, nodes: Sequence[gs.Node]) -> set[str]:
    """Names of the tensors (``nodes`` in topological order) whose shape is a function of the
    graph input shapes alone (see the module docstring)."""
    determined = {t.name for t in graph.inputs}
    valued: set[str] = set()      # values computed from constants and shapes only

    def known(t: gs.Tensor) -> bool:  # constants and absent optional inputs
        return not t.name or isinstance(t, gs.Constant)

    for node in nodes:
        standard = (node.domain or "") in ("", "ai.onnx") and node.op not in RANDOM and \
            not any(isinstance(v, gs.Graph) for v in node.attrs.values())
        if not standard:
            continue
        ins = list(node.inputs)
        shapes_ok = all(known(t) or t.name in determined for t in ins)
        values_ok = shapes_ok if node.op in ("Shape", "Size") else all(known(t) or t.name in valued for t in ins)
        if values_ok:
            valued.update(o.name for o in node.outputs)
        if not shapes_ok:
            continue
        if node.op in SHAPE_ONLY:
            shaped = True
        elif node.op in VALUE_SHAPED:
            shaped = all(known(ins[i]) or ins[i].name in valued for i in VALUE_SHAPED[node.op] if i < len(ins))
        else:
            shaped = values_ok
        if shaped:
            determined.update(o.name for o in node.outputs)
    return determined


NEEDS_SHAPES = "needs static input dims; give --input-shape"


def tensor_shapes(graph: gs.Graph, nodes: Sequence[gs.Node],
                  input_shapes: Mapping[str, Sequence[int]] | None) -> tuple[dict[str, tuple], dict[str, str]]:
    """(dims per tensor name, why each not fully known node output is unknown); see the module docstring."""
    try:
        shapes = _dims(infer_graph_shapes(graph, input_shapes))
    except Exception:  # noqa: BLE001 -- inference is best effort; unknown shapes freeze what needs them
        shapes = {}
    for t in graph.inputs:
        if t.name not in shapes and t.shape is not None:
            shapes[t.name] = tuple(t.shape)
    for name, dims in (input_shapes or {}).items():
        shapes[name] = tuple(int(d) for d in dims)
    missing = [o.name for n in nodes for o in n.outputs if o.name and not _static(shapes.get(o.name))]
    if not missing:
        return shapes, {}
    concrete = {t.name: shapes.get(t.name) for t in graph.inputs}
    if not all(_static(d) for d in concrete.values()):
        return shapes, {name: NEEDS_SHAPES for name in missing}
    determined = shape_determined(graph, nodes)
    probe = [name for name in missing if name in determined]
    if probe:
        try:
            model = to_model(graph)
        except Exception:  # noqa: BLE001 -- best effort, like the run itself; the reason says so
            model = None
        if model is not None:
            shapes.update(shapes_by_running(model, concrete, probe))
    unknown = {}
    for name in missing:
        if _static(shapes.get(name)):
            continue
        unknown[name] = (f"the shape of '{name}' is unknown even with static input shapes: ONNX shape inference "
                         "and an ONNX Runtime run could not tell it" if name in determined else
                         f"the shape of '{name}' depends on input values (a data-dependent op, a control-flow "
                         "or custom op precedes it), so no static shape holds for it")
    return shapes, unknown
