"""Fold a per-channel constant Mul / Div / Add / Sub after a Conv into the conv's weights.

Rule: a ``Mul``, ``Div``, ``Add`` or ``Sub`` one of whose operands is the output ``y`` of a
``Conv`` / ``ConvTranspose`` and the other a constant ``c`` is folded when

- the node is the *only* reader of ``y`` and ``y`` is not a graph output (else the unscaled
  value is still needed),
- ``c`` is per output channel: after left-padding its shape with 1s to the rank of ``y`` every
  axis but 1 is 1 and axis 1 is 1 or ``Cout`` (``[C,1,1]``, ``[1,C,1,1]``, ``[1]``, scalar);
  a constant of higher rank than ``y`` or one varying along another axis (``[C]`` against an
  NCHW output varies along W) is left alone with its reason,
- the conv's weight (and bias, if any) are float32/float64 constants.

Maths, per output channel ``o`` with ``y = W*x + b``:
``y*c``: W' = W*c, b' = b*c;  ``y/c``: the same with 1/c (refused when some c is 0);
``y+c``: b' = b + c;  ``y-c``: b' = b - c;  ``c-y``: W' = -W, b' = c - b.
``c/y`` is not affine in ``y`` and is refused. A missing bias is created as zeros.
ConvTranspose weights are ``W[Cin, Cout/g, k...]``: the output channel of group ``j`` slot ``i``
is ``j*Cout/g + i``, so scaling runs along axis 1 within each group's block of input rows.

The node's output tensor becomes the conv's output, so names seen downstream (and graph
outputs) do not change. Weights read by other nodes too are cloned, never edited in place.
``stats``: ``folded`` [{node, op, into}], ``refused`` [{node, reason}] where the pattern is there
but cannot fold, ``kept`` [{node, reason}] where the conv output has other readers (hard-swish's
``x + 3`` reads a conv output that ``x * ...`` reads too: not a fold candidate, not a refusal).
The other canonical passes (fuse_batchnorm) reuse :func:`match_channel_affine` and
:func:`apply_channel_affine` from here.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .base import Pass, PassResult
from .graph import unique_name

CONVS = ("Conv", "ConvTranspose")
AFFINE_OPS = ("Mul", "Div", "Add", "Sub")
FLOAT_TYPES = (np.float32, np.float64)


def _empty(t: gs.Tensor) -> bool:
    return not t.name and not isinstance(t, gs.Constant)


def conv_out_channels(conv: gs.Node) -> int:
    w = conv.inputs[1].values
    group = int(conv.attrs.get("group", 1))
    return int(w.shape[0]) if conv.op == "Conv" else int(w.shape[1]) * group


def conv_refusal(graph: gs.Graph, conv: gs.Node) -> str | None:
    """Why the weights of ``conv`` cannot be rewritten, or None when they can."""
    if len(conv.inputs) < 2 or not isinstance(conv.inputs[1], gs.Constant):
        return f"{conv.op} weight is not a constant (computed at runtime)"
    w = conv.inputs[1]
    if w in graph.inputs:
        return f"{conv.op} weight '{w.name}' is also a graph input, so callers may override it"
    if np.dtype(w.dtype).type not in FLOAT_TYPES:
        return f"{conv.op} weight dtype {np.dtype(w.dtype).name} is not float32/float64; folding would round"
    values = w.values
    group = int(conv.attrs.get("group", 1))
    if values.ndim < 3 or group < 1 or (conv.op == "ConvTranspose" and values.shape[0] % group):
        return f"{conv.op} weight shape {list(values.shape)} does not fit group={group}"
    if len(conv.inputs) > 2 and not _empty(conv.inputs[2]):
        b = conv.inputs[2]
        if not isinstance(b, gs.Constant):
            return f"{conv.op} bias is not a constant (computed at runtime)"
        if b in graph.inputs:
            return f"{conv.op} bias '{b.name}' is also a graph input"
        if b.values.shape != (conv_out_channels(conv),):
            return f"{conv.op} bias shape {list(b.values.shape)} is not [Cout]"
    return None


def per_channel(c: np.ndarray, rank: int, cout: int) -> np.ndarray | str:
    """``c`` as a length-``cout`` vector when it is per-output-channel, else the reason it is not."""
    if c.ndim > rank:
        return f"constant of shape {list(c.shape)} has a higher rank than the conv output ({rank})"
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, cout):
        return (f"constant of shape {list(c.shape)} is not per output channel (Cout={cout}, "
                f"output rank {rank})")
    return np.broadcast_to(c.astype(np.float64).reshape(-1), (cout,))


def sole_reader(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    """The one node reading ``tensor`` (once), if it is not a graph output; else None."""
    if len(tensor.outputs) != 1 or tensor in graph.outputs:
        return None
    return tensor.outputs[0]


def conv_operand(node: gs.Node) -> tuple[int, gs.Node] | None:
    """(position, conv) when an input of ``node`` is the first output of a Conv/ConvTranspose."""
    for pos, t in enumerate(node.inputs[:2]):
        if t.inputs and t.inputs[0].op in CONVS and t.inputs[0].outputs[0] is t:
            return pos, t.inputs[0]
    return None


@dataclasses.dataclass(frozen=True)
class AffineMatch:
    conv: gs.Node
    scale: np.ndarray | None  # [Cout] float64, None for 1
    shift: np.ndarray | None  # [Cout] float64, None for 0


@dataclasses.dataclass(frozen=True)
class NoFold:
    """Why a conv-by-constant node stays. ``refused``: the pattern is there but something forbids
    the fold; otherwise the pattern does not apply (the conv output has other readers)."""

    reason: str
    refused: bool = True


def match_channel_affine(graph: gs.Graph, node: gs.Node) -> AffineMatch | NoFold | None:
    """A foldable match, why it cannot fold, or None when ``node`` is not conv-by-constant."""
    if node.op not in AFFINE_OPS or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    found = conv_operand(node)
    if found is None:
        return None
    pos, conv = found
    other = node.inputs[1 - pos]
    if not isinstance(other, gs.Constant):
        return None
    y = node.inputs[pos]
    if y in graph.outputs:
        return NoFold(f"conv output '{y.name}' is also a graph output", refused=False)
    if len(y.outputs) != 1:
        return NoFold(f"conv output '{y.name}' has {len(y.outputs)} readers", refused=False)
    reason = conv_refusal(graph, conv)
    if reason:
        return NoFold(reason)
    c = np.asarray(other.values)
    if c.dtype.type not in FLOAT_TYPES:
        return NoFold(f"constant '{other.name}' has dtype {c.dtype.name}, not float")
    vec = per_channel(c, conv.inputs[1].values.ndim, conv_out_channels(conv))
    if isinstance(vec, str):
        return NoFold(vec)
    if node.op == "Mul":
        return AffineMatch(conv, vec, None)
    if node.op == "Add":
        return AffineMatch(conv, None, vec)
    if node.op == "Sub":
        return AffineMatch(conv, None, -vec) if pos == 0 else AffineMatch(conv, -np.ones_like(vec), vec)
    if pos == 1:
        return NoFold("c / conv(x) is not affine in the conv output")
    if np.any(vec == 0):
        return NoFold("division by a constant with zero entries")
    return AffineMatch(conv, 1.0 / vec, None)


def write_input(graph: gs.Graph, node: gs.Node, index: int, values: np.ndarray, suffix: str = "") -> gs.Constant:
    """Give ``node`` input ``index`` the array ``values``: in place when only ``node`` reads it,
    else as a clone named ``<name>__<node>`` so other readers keep the original."""
    t = node.inputs[index] if index < len(node.inputs) else None
    if t is not None and isinstance(t, gs.Constant) and len(t.outputs) == 1 \
            and t not in graph.outputs and t not in graph.inputs:
        t.values = values
        return t
    if t is None or _empty(t):
        name = unique_name(graph, f"{node.name or node.outputs[0].name}{suffix}")
    else:
        name = unique_name(graph, f"{t.name}__{node.name or node.outputs[0].name}")
    new = gs.Constant(name, values)
    if index < len(node.inputs):
        node.inputs[index] = new
    else:
        while len(node.inputs) < index:
            node.inputs.append(gs.Variable.empty())
        node.inputs.append(new)
    return new


def apply_channel_affine(graph: gs.Graph, conv: gs.Node, scale: np.ndarray | None,
                         shift: np.ndarray | None) -> None:
    """Rewrite ``conv`` so it computes ``scale * conv(x) + shift`` per output channel.

    The caller has checked :func:`conv_refusal`. Arithmetic is float64, stored in the weight's dtype.
    """
    w = np.asarray(conv.inputs[1].values)
    cout = conv_out_channels(conv)
    has_bias = len(conv.inputs) > 2 and not _empty(conv.inputs[2])
    b = np.asarray(conv.inputs[2].values, np.float64) if has_bias else np.zeros(cout)
    if scale is not None:
        w64 = w.astype(np.float64)
        if conv.op == "Conv":
            w64 = w64 * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        else:
            group = int(conv.attrs.get("group", 1))
            blocks = w64.reshape((group, w.shape[0] // group) + w.shape[1:])
            blocks = blocks * scale.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
            w64 = blocks.reshape(w.shape)
        write_input(graph, conv, 1, w64.astype(w.dtype))
        b = b * scale
    if shift is not None:
        b = b + shift
    if has_bias or shift is not None:  # scaling a missing (zero) bias leaves it zero
        write_input(graph, conv, 2, b.astype(w.dtype), suffix="_bias")


def bypass_into(graph: gs.Graph, conv: gs.Node, node: gs.Node) -> None:
    """Remove ``node`` and let ``conv`` produce ``node``'s output tensor (its name survives)."""
    out = node.outputs[0]
    node.outputs.clear()
    node.inputs.clear()
    conv.outputs[0] = out
    graph.nodes.remove(node)


@dataclasses.dataclass(frozen=True)
class FoldChannelAffine(Pass):
    """See the module docstring."""

    name = "fold_channel_affine"

    def call(self, graph: gs.Graph) -> PassResult:
        folded: list[dict[str, Any]] = []
        refused: dict[str, str] = {}
        kept: dict[str, str] = {}
        progress = True
        while progress:  # a fold makes the next op of a chain (Mul then Add) adjacent to the conv
            progress = False
            for node in list(graph.nodes):
                match = match_channel_affine(graph, node)
                if isinstance(match, NoFold):
                    (refused if match.refused else kept)[node.name] = match.reason
                elif match is not None:
                    apply_channel_affine(graph, match.conv, match.scale, match.shift)
                    bypass_into(graph, match.conv, node)
                    folded.append({"node": node.name, "op": node.op, "into": match.conv.name})
                    refused.pop(node.name, None)
                    kept.pop(node.name, None)
                    progress = True
        stats = {"folded": folded, "refused": [{"node": n, "reason": r} for n, r in refused.items()],
                 "kept": [{"node": n, "reason": r} for n, r in kept.items()]}
        return PassResult(graph, bool(folded), stats)


def fold_channel_affine(graph: gs.Graph) -> PassResult:
    """Fold per-channel constant Mul/Div/Add/Sub after Conv/ConvTranspose into its weights."""
    return FoldChannelAffine()(graph)
