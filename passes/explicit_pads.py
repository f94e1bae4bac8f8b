"""Replace ``auto_pad`` SAME_UPPER / SAME_LOWER / VALID by ``auto_pad=NOTSET`` and explicit ``pads``.

Ops: Conv, ConvTranspose, MaxPool, AveragePool, LpPool. Later passes (the kernel-border cut)
move kernel taps into ``pads``, so pads must be numbers first.

Maths, per spatial axis with input size ``H``, stride ``s``, dilation ``d``, kernel ``k`` and
``dk = d*(k-1) + 1`` (pads are written ``(lo, hi)``):

- ``VALID``: ``(0, 0)`` for every op.
- Conv / pools, ``SAME_*``: the output has ``ceil(H/s)`` positions, so the total padding is
  ``t = (ceil(H/s) - 1)*s + dk - H``; ``SAME_UPPER`` puts the odd extra at the end
  (``lo = t // 2``), ``SAME_LOWER`` at the beginning (``lo = t - t // 2``), ``hi = t - lo``.
  With ``s = 1`` this is ``t = dk - 1 = d*(k-1)`` whatever ``H`` is, so no size is needed.
  With ``s > 1`` ``t`` depends on ``H``: the size comes from the tensor's shape in the graph,
  from shape inference over the graph's static input shapes, or from ``input_shapes``
  (via :func:`smof_onnx.passes.graph.with_static_shapes` on a copy); without it the node is refused.
  ``t`` is negative when the kernel is shorter than the stride (``1 - s <= t < 0``): the last
  ``-t`` elements are never read. For a Conv, ONNX Runtime splits a negative ``t`` like a
  positive one (``lo = trunc(t/2)`` for SAME_UPPER, ``trunc((t+1)/2)`` for SAME_LOWER) while the
  spec and the reference evaluator clamp ``t`` to 0; they agree exactly when that ``lo`` is 0,
  and then ``(0, 0)`` gives the same ``ceil(H/s)`` outputs at the same positions
  (``floor((H - dk)/s) + 1 = ceil(H/s)`` for ``-t`` in ``[1, s-1]``); otherwise it is refused.
  For pools the runtimes disagree outright (ONNX Runtime rejects the node, the reference
  evaluator starts at ``floor(t/2) < 0``), so pools with a negative ``t`` are refused.
- Pools with ``dilations > 1`` and ``SAME_*`` are refused: ONNX Runtime's result for them does
  not match the spec formula, so there is no single right answer to write down.
- ConvTranspose, ``SAME_*`` (no ``output_shape``): the output has ``H*s`` positions, so
  ``t = max(0, output_padding + dk - s)``, which does not depend on ``H``; the odd extra goes
  to the end for SAME_UPPER and to the start for SAME_LOWER (the spec and the ONNX
  reference evaluator; ONNX Runtime agrees, tests/test_explicit_pads.py checks it). A
  ConvTranspose with ``output_shape`` derives its pads from it and is left alone.
- Conv with ``dilations > 1`` and ``SAME_*`` follows the spec formula above; ONNX Runtime
  refuses to run that combination, so the explicit form is the only one it runs at all.

Every refusal is listed under ``stats["refused"]`` with its reason; converted nodes under
``stats["converted"]`` as ``{"node", "op", "auto_pad", "pads"}``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import onnx_graphsurgeon as gs

from .base import ModelError, Pass, PassResult
from .graph import graph_input_shapes, to_model, with_static_shapes

OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")
POOLS = ("MaxPool", "AveragePool", "LpPool")
AUTO = ("SAME_UPPER", "SAME_LOWER", "VALID")


def _attr_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _trunc_div2(x: int) -> int:
    """C++ ``x / 2`` (rounds toward zero), as ONNX Runtime computes it."""
    return int(x / 2)


def kernel_of(node: gs.Node) -> list[int] | None:
    """Spatial kernel sizes from ``kernel_shape`` or the weight's shape, else None."""
    if "kernel_shape" in node.attrs:
        return [int(k) for k in node.attrs["kernel_shape"]]
    if node.op in ("Conv", "ConvTranspose") and len(node.inputs) > 1:
        shape = node.inputs[1].shape
        if shape is not None and len(shape) > 2 and all(isinstance(d, int) for d in shape[2:]):
            return [int(d) for d in shape[2:]]
    return None


class StaticSizes:
    """Static dims of tensors: the graph's own shapes first, shape inference only when needed.

    Inference runs at most once, on a copy of the model whose inputs take ``input_shapes``
    (or their own static shapes); the graph itself is never edited. Shared with
    :mod:`smof_onnx.passes.cut_kernel_borders`, which needs a size only to prove a crop fits.
    """

    def __init__(self, graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None):
        self.graph = graph
        self.input_shapes = input_shapes
        self._inferred: dict[str, list[int | None]] | None = None

    def dim(self, tensor: gs.Tensor, axis: int) -> int | None:
        """The static size of ``tensor`` along ``axis``, or None when it cannot be known."""
        shape = tensor.shape
        if shape is not None and axis < len(shape) and isinstance(shape[axis], int) and shape[axis] > 0:
            return int(shape[axis])
        if self._inferred is None:
            self._inferred = self._infer()
        inferred = self._inferred.get(tensor.name)
        return inferred[axis] if inferred is not None and axis < len(inferred) else None

    def _infer(self) -> dict[str, list[int | None]]:
        model = to_model(self.graph)
        try:
            shapes = graph_input_shapes(model, self.input_shapes)
        except ModelError:
            return {}
        inferred = with_static_shapes(model, shapes)
        out: dict[str, list[int | None]] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                out[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                for d in tt.shape.dim]
        return out


def _same_pads(node: gs.Node, kernel: list[int], sizes: StaticSizes, mode: str) -> list[int] | str:
    """Pads for Conv / pools with SAME_*, or the reason they cannot be written exactly."""
    n = len(kernel)
    strides = [int(s) for s in node.attrs.get("strides", [1] * n)]
    dilations = [int(d) for d in node.attrs.get("dilations", [1] * n)]
    if node.op in POOLS and any(d != 1 for d in dilations):
        return "pool with dilations > 1 and auto_pad SAME: ONNX Runtime and the spec pad it differently"
    heights = [sizes.dim(node.inputs[0], 2 + i) if strides[i] > 1 else None for i in range(n)]
    if any(strides[i] > 1 and heights[i] is None for i in range(n)):
        return ("stride > 1 with auto_pad SAME needs the static spatial input size; "
                "give input shapes (--input-shape)")
    lo, hi = [], []
    for i in range(n):
        dk = dilations[i] * (kernel[i] - 1) + 1
        if strides[i] == 1:
            total = dk - 1
        else:
            h = int(heights[i])  # type: ignore[arg-type]
            total = (-(-h // strides[i]) - 1) * strides[i] + dk - h
        head = _trunc_div2(total) if mode == "SAME_UPPER" else _trunc_div2(total + 1)
        if total < 0:
            if node.op in POOLS:
                return (f"pool with auto_pad {mode} and a kernel shorter than its stride on axis {2 + i}: "
                        "runtimes disagree on it (ONNX Runtime rejects it)")
            if head != 0:
                return (f"auto_pad {mode} with kernel shorter than stride on axis {2 + i} gives a "
                        f"negative start pad under ONNX Runtime but 0 under the spec")
            head = total = 0
        lo.append(head)
        hi.append(total - head)
    return lo + hi


def _transpose_same_pads(node: gs.Node, kernel: list[int], mode: str) -> list[int]:
    n = len(kernel)
    strides = [int(s) for s in node.attrs.get("strides", [1] * n)]
    dilations = [int(d) for d in node.attrs.get("dilations", [1] * n)]
    adj = [int(a) for a in node.attrs.get("output_padding", [0] * n)]
    lo, hi = [], []
    for i in range(n):
        total = max(0, adj[i] + dilations[i] * (kernel[i] - 1) + 1 - strides[i])
        lo.append(total // 2 if mode == "SAME_UPPER" else total - total // 2)
        hi.append(total - lo[-1])
    return lo + hi


@dataclasses.dataclass(frozen=True)
class ExplicitPads(Pass):
    """See the module docstring."""

    name = "explicit_pads"
    input_shapes: Mapping[str, Sequence[int]] | None = None

    def call(self, graph: gs.Graph) -> PassResult:
        converted: list[dict[str, Any]] = []
        refused: list[dict[str, str]] = []
        sizes = StaticSizes(graph, self.input_shapes)
        for node in graph.nodes:
            if node.op not in OPS:
                continue
            mode = _attr_str(node.attrs.get("auto_pad", "NOTSET"))
            if mode not in AUTO:
                continue
            result = self._pads(node, mode, sizes)
            if isinstance(result, str):
                refused.append({"node": node.name, "reason": result})
                continue
            node.attrs["auto_pad"] = "NOTSET"
            node.attrs["pads"] = result
            converted.append({"node": node.name, "op": node.op, "auto_pad": mode, "pads": result})
        return PassResult(graph, bool(converted), {"converted": converted, "refused": refused})

    def _pads(self, node: gs.Node, mode: str, sizes: StaticSizes) -> list[int] | str:
        kernel = kernel_of(node)
        if kernel is None:
            return "kernel size unknown (no kernel_shape and the weight's shape is not static)"
        if node.op == "ConvTranspose" and "output_shape" in node.attrs:
            return "ConvTranspose has output_shape; its pads are derived from it"
        if mode == "VALID":
            return [0] * (2 * len(kernel))
        if node.op == "ConvTranspose":
            return _transpose_same_pads(node, kernel, mode)
        return _same_pads(node, kernel, sizes, mode)


def explicit_pads(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> PassResult:
    """Turn every convertible ``auto_pad`` into explicit ``pads`` (see the module docstring)."""
    return ExplicitPads(input_shapes)(graph)
