"""Which tensors feature distillation compares: the *stage outputs* (torch-free).

:func:`feature_taps` picks them from the graph; :func:`smof_onnx.learn.losses.attach_feature_taps`
taps them in the student and the teacher, and :func:`smof_onnx.learn.losses.feature_loss`
compares them.
"""
from __future__ import annotations

import onnx

from smof_onnx.passes.graph import node_attributes

__all__ = ["feature_taps", "DOWNSAMPLING", "ACTIVATIONS"]

DOWNSAMPLING = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Elu", "Selu", "Gelu",
                         "Mish", "Tanh", "PRelu"})


def feature_taps(model: onnx.ModelProto) -> list[str]:
    """The tensors feature distillation compares: the *stage outputs*, what the block that
    lowers the resolution reads. That is the data input of every node that lowers it (a Conv
    with a stride above 1, a pooling), or, where that input is the activation of a pointwise
    (1x1, stride 1, ungrouped) Conv, the input of that Conv: an inverted residual expands the
    stage output before its strided depthwise conv, and the expanded channels are the block's
    inner channels. Only tensors that a node makes (not graph inputs). Matching stage outputs
    leaves each stage free in how it gets there (inner channels may go), unlike matching
    every layer."""
    producer = {o: node for node in model.graph.node for o in node.output if o}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    taps: list[str] = []
    for node in model.graph.node:
        strides = node_attributes(node).get("strides", [])
        lowers = node.op_type in DOWNSAMPLING or (node.op_type == "Conv" and any(s > 1 for s in strides))
        if not lowers or not node.input:
            continue
        tap = _block_input(node.input[0], producer, weights)
        if tap in producer and tap not in taps:
            taps.append(tap)
    return taps


def _block_input(x: str, producer: dict, weights: dict) -> str:
    act = producer.get(x)
    conv = producer.get(act.input[0]) if act is not None and act.op_type in ACTIVATIONS else None
    if conv is None or conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in weights:
        return x
    attrs = node_attributes(conv)
    pointwise = (all(k == 1 for k in weights[conv.input[1]][2:]) and all(s == 1 for s in attrs.get("strides", []))
                 and attrs.get("group", 1) == 1)
    return conv.input[0] if pointwise else x
