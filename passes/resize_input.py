"""Make a model compute at a fraction r of its input's spatial size (design 5b, resolution).

This is a method decision, not an exact rewrite: outputs change (the model is meant to be
fine-tuned at the new size). Only 4-D (N, C, H, W) float inputs are resized.

Rules:
- New size per spatial axis: ``round(d * scale)`` (at least 1), or ``size`` as given; both must
  not exceed the original. Spatial dims must be concrete: from the declared input or
  ``input_shapes``; a symbolic spatial dim is pinned to the given size in the declared input
  (the rewritten graph holds fixed sizes), and ``stats["pinned"]`` says so.
- Size-agnostic downstream only. The graph's shapes are inferred at the original and at the
  reduced size (ONNX shape inference, ONNX Runtime where inference cannot tell); the model is
  refused with :class:`UnsupportedModelError` naming the op and the reason when
  * a ``Reshape`` / ``Flatten`` / ``Gemm`` / ``MatMul`` / ``Expand`` / ``Tile`` reads a tensor
    whose non-batch shape depends on the input size (a head tied to the spatial size: Flatten
    of an HxW map before a Gemm, a Reshape with hard-coded spatial dims);
  * a ``Resize`` / ``Upsample`` resizes to fixed ``sizes``;
  * a graph output's batch / channel dims or rank change with the input size (it encodes
    positions or grid counts: flattened anchor lists, token sequences).
  Global pooling before the head and fully convolutional graphs pass.
- ``keep_interface=True`` (default): the declared inputs stay; inside the graph, the input is
  reduced first, by ``Resize`` (mode linear, ``antialias=1``, half-pixel) at opset >= 18;
  below that by ``AveragePool`` (kernel = stride = the factor: an exact area filter) when the
  factor is an integer dividing each dim, else by ``Resize`` linear without antialias (aliasing
  is possible). Dense outputs (same rank, batch and channels, spatial dims that change with the
  input: segmentation and probability maps) are resized back to their original spatial size
  with ``Resize`` linear, so every output keeps its shape.
- ``keep_interface=False``: the declared input dims become the new size (an interface change);
  dense outputs keep their reduced size and their declared dims say so.
- The rewritten graph is run once under ONNX Runtime on zeros at its declared input size; a
  failure raises :class:`UnsupportedModelError` with the runtime's message.
- FLOPs counted on the result (``count_cost`` at the original input size) are those at the new
  size: every Conv downstream of the input sees the reduced map.

stats: ``inputs`` {name: {from, to, method}}, ``resized_back`` [output names],
``interface_changed`` bool, ``pinned`` [input names].
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .base import Pass, PassResult, UnsupportedModelError
from .graph import infer_graph_shapes, opset_version, shapes_by_running, to_model, unique_name

_READS_FEATURES = ("Reshape", "Flatten", "Gemm", "MatMul", "Expand", "Tile")


def _dims(vi: onnx.ValueInfoProto) -> tuple | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)


def _shapes_at(graph: gs.Graph, shapes: Mapping[str, Sequence[int]], names: list[str]) -> dict[str, tuple]:
    inferred = infer_graph_shapes(graph, shapes)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        d = _dims(vi)
        if d is not None and None not in d:
            out[vi.name] = d
    missing = [n for n in names if n not in out]
    if missing:
        out.update(shapes_by_running(to_model(graph), shapes, missing))
    return out


@dataclasses.dataclass(frozen=True)
class ResizeInput(Pass):
    """See the module docstring."""

    scale: float | None = None
    size: tuple[int, int] | None = None
    keep_interface: bool = True
    input_shapes: Mapping[str, Sequence[int]] | None = None
    name = "resize_input"

    def requires(self, graph: gs.Graph) -> None:
        if (self.scale is None) == (self.size is None):
            raise self.fail("give exactly one of scale (a fraction in (0, 1]) or size (H, W)")
        if self.scale is not None and not 0 < float(self.scale) <= 1:
            raise self.fail(f"scale must be in (0, 1], got {self.scale}")

    def _images(self, graph: gs.Graph) -> dict[str, tuple[list[int], tuple[int, int], list[str]]]:
        """name -> (full shape at the original size, new (h, w), symbolic dims pinned)."""
        given = dict(self.input_shapes or {})
        out = {}
        for t in graph.inputs:
            dims = list(given.get(t.name, t.shape or []))
            if t.dtype is None or not np.issubdtype(np.dtype(t.dtype), np.floating) or len(dims) != 4:
                continue
            declared = list(t.shape or [None] * 4)
            pinned = [t.name] if any(not isinstance(d, (int, np.integer)) or d <= 0 for d in declared[2:]) else []
            if any(not isinstance(d, (int, np.integer)) or d <= 0 for d in dims[2:]):
                raise UnsupportedModelError(f"[{self.name}]: input '{t.name}' has symbolic spatial dims {dims[2:]}; "
                                            "give its shape (--input-shape NAME=1x3xHxW)")
            dims[0] = dims[0] if isinstance(dims[0], (int, np.integer)) and dims[0] > 0 else 1
            h, w = int(dims[2]), int(dims[3])
            new = tuple(self.size) if self.size is not None else \
                (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
            if len(new) != 2 or not (0 < new[0] <= h and 0 < new[1] <= w):
                raise self.fail(f"new size {new} for input '{t.name}' must be positive and at most {(h, w)}")
            out[t.name] = ([int(d) for d in dims], (int(new[0]), int(new[1])), pinned)
        if not out:
            raise UnsupportedModelError(f"[{self.name}]: the model has no 4-D float (N, C, H, W) input to resize")
        return out

    def _check(self, graph: gs.Graph, images) -> list[tuple[gs.Tensor, tuple, tuple]]:
        """Refuse size-bound graphs; return the dense outputs (tensor, shape before, shape after)."""
        s0 = {k: v[0] for k, v in images.items()}
        s1 = {k: v[0][:2] + list(v[1]) for k, v in images.items()}
        watched = [n for n in graph.nodes if n.op in _READS_FEATURES + ("Resize", "Upsample")]
        names = [n.inputs[0].name for n in watched if n.inputs] + [t.name for t in graph.outputs]
        a, b = _shapes_at(graph, s0, names), _shapes_at(graph, s1, names)
        for n in watched:
            if n.op in ("Resize", "Upsample"):
                sizes = n.inputs[3] if len(n.inputs) > 3 else None
                if sizes is not None and isinstance(sizes, gs.Constant) and np.asarray(sizes.values).size:
                    raise UnsupportedModelError(f"[{self.name}] at node '{n.name}' ({n.op}): resizes to the fixed "
                                                f"sizes {np.asarray(sizes.values).tolist()}, tied to the input size")
                continue
            x = n.inputs[0]
            if a.get(x.name) is None or b.get(x.name) is None:
                raise UnsupportedModelError(f"[{self.name}] at node '{n.name}' ({n.op}): cannot tell the shape of "
                                            f"'{x.name}' at the reduced size; the graph may be tied to the input size")
            if a[x.name][1:] != b[x.name][1:]:
                raise UnsupportedModelError(
                    f"[{self.name}] at node '{n.name}' ({n.op}): reads '{x.name}' whose shape depends on the "
                    f"input size ({list(a[x.name])} at the original size, {list(b[x.name])} at the reduced one): "
                    "the graph is tied to the spatial size (use global pooling before the head)")
        lost = [t.name for t in graph.outputs if t.name in a and t.name not in b]
        if lost:
            raise UnsupportedModelError(
                f"[{self.name}]: the graph does not run at the reduced size {s1} (ONNX Runtime fails; outputs "
                f"{lost} have no shape there): its shapes are tied to the input size, e.g. H and W must be "
                "multiples of the total stride; choose another scale or size")
        dense = []
        for t in graph.outputs:
            sa, sb = a.get(t.name), b.get(t.name)
            if sa is None or sb is None:
                raise UnsupportedModelError(f"[{self.name}]: cannot tell the shape of output '{t.name}' at both sizes")
            if sa == sb:
                continue
            if len(sa) != 4 or len(sb) != 4 or sa[:2] != sb[:2]:
                raise UnsupportedModelError(
                    f"[{self.name}]: output '{t.name}' has shape {list(sa)} at the original size but {list(sb)} at "
                    "the reduced one: it encodes positions or grid counts, which resizing would change")
            dense.append((t, sa, sb))
        return dense

    def _resize(self, graph: gs.Graph, x: gs.Tensor, y: gs.Tensor, hw: tuple[int, int], down: bool,
                from_hw: tuple[int, int]) -> str:
        opset = opset_version(graph)
        base = unique_name(graph, f"{y.name}_resize")
        if down and opset < 18 and all(a % b == 0 for a, b in zip(from_hw, hw)):
            k = [a // b for a, b in zip(from_hw, hw)]
            graph.nodes.append(gs.Node("AveragePool", base, {"kernel_shape": k, "strides": k}, [x], [y]))
            return "averagepool"
        sizes = gs.Constant(unique_name(graph, f"{base}_sizes"), np.asarray(hw, np.int64))
        if opset >= 18:
            attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel", "axes": [2, 3]}
            if down:
                attrs["antialias"] = 1
            graph.nodes.append(gs.Node("Resize", base, attrs, [x, gs.Variable.empty(), gs.Variable.empty(), sizes], [y]))
            return "resize-linear-antialias" if down else "resize-linear"
        shape = gs.Variable(unique_name(graph, f"{base}_shape"), np.int64)
        nc = gs.Variable(unique_name(graph, f"{base}_nc"), np.int64)
        full = gs.Variable(unique_name(graph, f"{base}_full"), np.int64)
        i64 = lambda tag, v: gs.Constant(unique_name(graph, f"{base}_{tag}"), np.asarray(v, np.int64))  # noqa: E731
        empty = gs.Constant(unique_name(graph, f"{base}_empty"), np.zeros(0, np.float32))
        graph.nodes += [
            gs.Node("Shape", f"{base}/shape", inputs=[x], outputs=[shape]),
            gs.Node("Slice", f"{base}/nc", inputs=[shape, i64("s0", [0]), i64("s2", [2])], outputs=[nc]),
            gs.Node("Concat", f"{base}/sizes", {"axis": 0}, [nc, sizes], [full]),
            gs.Node("Resize", base, {"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
                    [x, empty, empty if opset < 13 else gs.Variable.empty(), full], [y])]
        return "resize-linear"

    def call(self, graph: gs.Graph) -> PassResult:
        images = self._images(graph)
        dense = self._check(graph, images)
        inputs = {}
        for t in list(graph.inputs):
            if t.name not in images:
                continue
            dims, hw, pinned = images[t.name]
            if self.keep_interface:
                small = gs.Variable(unique_name(graph, f"{t.name}_resized"), t.dtype)
                for node in list(t.outputs):
                    for i, u in enumerate(node.inputs):
                        if u is t:
                            node.inputs[i] = small
                method = self._resize(graph, t, small, hw, True, (dims[2], dims[3]))
                t.shape = [t.shape[0] if t.shape else dims[0]] + dims[1:]
            else:
                method = "declared"
                t.shape = [t.shape[0] if t.shape else dims[0], dims[1], hw[0], hw[1]]
            inputs[t.name] = {"from": dims[2:], "to": list(hw), "method": method}
        back = []
        for t, sa, sb in dense:
            if self.keep_interface:
                low = gs.Variable(unique_name(graph, f"{t.name}_lowres"), t.dtype)
                prod = t.inputs[0]
                prod.outputs[prod.outputs.index(t)] = low
                self._resize(graph, low, t, tuple(sa[2:]), False, tuple(sb[2:]))
                back.append(t.name)
            elif t.shape is not None and len(t.shape) == 4:
                t.shape = list(t.shape[:2]) + list(sb[2:])
        graph.toposort()
        run_at = {k: [v[0][0], v[0][1]] + (v[0][2:] if self.keep_interface else list(v[1]))
                  for k, v in images.items()}
        if not shapes_by_running(to_model(graph), run_at, [t.name for t in graph.outputs]):
            raise UnsupportedModelError(f"[{self.name}]: the rewritten graph does not run under ONNX Runtime at "
                                        f"{run_at}; the graph is tied to its input size somewhere")
        pinned = [n for v in images.values() for n in v[2]]
        stats = {"inputs": inputs, "resized_back": back, "interface_changed": not self.keep_interface,
                 "pinned": pinned}
        return PassResult(graph, True, stats)


def resize_input(graph: gs.Graph, scale: float | None = None, size: tuple[int, int] | None = None,
                 keep_interface: bool = True,
                 input_shapes: Mapping[str, Sequence[int]] | None = None) -> PassResult:
    """Make ``graph`` compute at ``scale`` (or ``size``) of its input; see the module docstring."""
    return ResizeInput(scale, None if size is None else tuple(size), keep_interface, input_shapes)(graph)
