"""Fold BatchNormalization (inference mode) into the Conv / ConvTranspose that feeds it.

Rule: a ``BatchNormalization`` whose input ``y`` is the output of a Conv or ConvTranspose is
folded when ``y`` has the BN as its only reader and is not a graph output, the BN runs in
inference mode (``training_mode`` absent or 0 and no statistics outputs listed: in opsets < 14
listing them selects training mode, normalising by batch statistics), its
scale / B / mean / var are constants of shape ``[C]`` (``spatial=0`` of opsets < 9 is refused),
and the conv's weight (and bias) are float constants. Anything else is left alone; when a BN
follows a conv but cannot fold, ``refused`` says why, and BNs with no conv before them are
listed under ``kept``.

Maths, per output channel: ``BN(y) = s*y + (beta - s*mean)`` with ``s = gamma / sqrt(var + eps)``,
so ``W' = W*s`` (along the output-channel axis: 0 for Conv, 1 within each group's block for
ConvTranspose ``W[Cin, Cout/g, k...]``) and ``b' = (b - mean)*s + beta`` (``b = 0`` if absent).

Paddle's form: paddle2onnx writes a conv bias as a separate ``Add`` of a ``[1,C,1,1]`` constant
between the conv and the BN (Conv -> Add -> BN). Such an Add (any per-channel constant
Mul/Div/Add/Sub that :mod:`smof_onnx.passes.fold_channel_affine` would fold) is folded into the conv
first, then the BN.

The BN's output tensor becomes the conv's output, so downstream names and graph outputs keep
their names; the conv keeps its node name. Weights read by other nodes are cloned, not edited.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .base import Pass, PassResult
from .fold_channel_affine import (
    CONVS, AffineMatch, NoFold, apply_channel_affine, bypass_into, conv_out_channels, conv_refusal,
    match_channel_affine,
)

_Chain = list[tuple[gs.Node, AffineMatch]]


def _bn_refusal(graph: gs.Graph, bn: gs.Node) -> str | None:
    if int(bn.attrs.get("training_mode", 0)):
        return "BatchNormalization runs in training mode (training_mode=1)"
    extra = [t.name for t in bn.outputs[1:] if t.name]
    if extra:
        # Opsets 9-13 have no training_mode attribute: listing the statistics outputs *is*
        # training mode (batch statistics), whether or not anything reads them.
        return f"BatchNormalization has statistics outputs {extra}, so it runs in training mode"
    if "spatial" in bn.attrs and not int(bn.attrs["spatial"]):
        return "BatchNormalization with spatial=0 normalises per activation, not per channel"
    if len(bn.inputs) != 5 or not all(isinstance(t, gs.Constant) for t in bn.inputs[1:]):
        return "BatchNormalization scale/B/mean/var are not all constants"
    shapes = {tuple(np.asarray(t.values).shape) for t in bn.inputs[1:]}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        return f"BatchNormalization parameters have shapes {sorted(shapes)}, expected [C]"
    return None


def _producer_chain(graph: gs.Graph, bn: gs.Node) -> tuple[gs.Node | None, _Chain, str | None]:
    """The conv feeding ``bn`` through zero or more foldable per-channel affine nodes.

    Returns (conv, affine nodes to fold first, in order from the conv), or a reason.
    """
    chain: _Chain = []
    t = bn.inputs[0]
    while t.inputs:
        node = t.inputs[0]
        if node.op in CONVS:
            if node.outputs[0] is not t:
                return None, [], None
            return node, chain[::-1], None
        match = match_channel_affine(graph, node)
        if not isinstance(match, AffineMatch) or len(node.outputs[0].outputs) != 1 \
                or node.outputs[0] in graph.outputs:
            return None, [], match.reason if isinstance(match, NoFold) and match.refused else None
        chain.append((node, match))
        t = match.conv.outputs[0]
    return None, [], None


@dataclasses.dataclass(frozen=True)
class FuseBatchnorm(Pass):
    """See the module docstring."""

    name = "fuse_batchnorm"

    def call(self, graph: gs.Graph) -> PassResult:
        folded: list[dict[str, Any]] = []
        refused: list[dict[str, str]] = []
        kept: list[dict[str, str]] = []
        for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
            conv, chain, why = _producer_chain(graph, bn)
            if conv is None:
                if why:
                    refused.append({"node": bn.name, "reason": f"the per-channel op before it cannot fold: {why}"})
                else:
                    src = bn.inputs[0].inputs[0].op if bn.inputs[0].inputs else "a graph input"
                    kept.append({"node": bn.name, "reason": f"input comes from {src}, not a Conv/ConvTranspose"})
                continue
            y = conv.outputs[0]
            reason = _bn_refusal(graph, bn) or conv_refusal(graph, conv)
            if reason is None and (len(y.outputs) != 1 or y in graph.outputs):
                reason = f"conv output '{y.name}' is read elsewhere or is a graph output"
            if reason is None:
                cout = conv_out_channels(conv)
                if bn.inputs[1].values.shape != (cout,):
                    reason = f"BatchNormalization has {bn.inputs[1].values.shape[0]} channels, the conv {cout}"
            if reason:
                refused.append({"node": bn.name, "reason": reason})
                continue
            via = []
            for node, match in chain:
                apply_channel_affine(graph, conv, match.scale, match.shift)
                bypass_into(graph, conv, node)
                via.append(node.name)
            gamma, beta, mean, var = (np.asarray(t.values, np.float64) for t in bn.inputs[1:])
            s = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
            apply_channel_affine(graph, conv, s, beta - mean * s)
            bypass_into(graph, conv, bn)
            entry: dict[str, Any] = {"bn": bn.name, "into": conv.name}
            if via:
                entry["via"] = via
            folded.append(entry)
        stats = {"folded": folded, "refused": refused, "kept": kept}
        return PassResult(graph, bool(folded), stats)


def fuse_batchnorm(graph: gs.Graph) -> PassResult:
    """Fold every inference-mode BatchNormalization after a Conv/ConvTranspose into it."""
    return FuseBatchnorm()(graph)
