"""Cut kernel borders that are zero across every filter out of Conv / ConvTranspose (design 3.1).

Rule: for a Conv with constant weight ``W[Cout, Cin/g, k_1..k_n]`` (ConvTranspose:
``W[Cin, Cout/g, k...]``), per spatial axis ``i``, ``r_lo`` / ``r_hi`` count the leading /
trailing slices of that axis that are zero in *every* filter and input channel (groups and
depthwise included: the profile is taken over both channel axes, so the cut stays dense).
The kernel becomes ``k' = k - r_lo - r_hi`` (the largest cut that drops only zeros) and the pads
``lo' = lo - d*r_lo``, ``hi' = hi - d*r_hi`` (``d`` the dilation of the axis).

Maths, Conv, one axis, stride ``s``: with ``x`` unpadded, output ``o`` reads
``y[o] = sum_t w[t] x[o*s + t*d - lo]`` (``x`` is 0 outside ``[0, H)``). Only taps
``t in [r_lo, k - r_hi)`` are non-zero; with ``t' = t - r_lo``,
``y[o] = sum_t' w[t' + r_lo] x[o*s + t'*d - (lo - d*r_lo)]``: the same sum over the kernel
``W[..., r_lo : k - r_hi]`` with start pad ``lo'``. The sampled window starts ``o*s`` are
untouched, so this holds for any stride: in padded coordinates the first window starts
``d*r_lo`` later in the old frame, which is exactly where the new frame (``d*r_lo`` fewer pad
cells) puts position 0. The output size keeps its numerator,
``H + lo' + hi' - d(k'-1) - 1 = H + lo + hi - d(k-1) - 1``, so ``floor(num/s) + 1`` is unchanged.

Negative pads (valid convolutions, MTCNN-like): a pad ``lo' < 0`` means the first
``c_lo = -lo'`` input elements are never read by a non-zero tap; ``hi' < 0`` the last
``c_hi = -hi'``. The input is cropped by a ``Slice`` on that axis with ``start = c_lo`` and
``end = -c_hi`` (``INT64_MAX`` when ``c_hi = 0``, since ``-0`` would mean "empty") and the pad set
to ``max(lo', 0)`` / ``max(hi', 0)``. With ``x_c = x[c_lo : H - c_hi]`` and
``j = o*s + t'*d - lo'``, the new conv reads ``x_c[j - c_lo] = x[j]`` whenever
``c_lo <= j < H - c_hi`` and 0 otherwise, the old one ``x[j]`` when ``0 <= j < H``; these agree
because ``j >= -lo' = c_lo`` always and ``j <= (out-1)*s + d(k'-1) - lo' <= H + hi' - 1`` (the
numerator bound), i.e. ``j < H - c_hi``. The numerator itself is unchanged since
``max(p,0) - max(-p,0) = p``. So any stride is exact, *provided the Slice really yields
``H - c_lo - c_hi >= 1`` elements* (Slice clamps; it cannot go negative). Validity of the
original gives ``H >= d(k-1) + 1 - lo - hi``, which proves it whenever both sides crop (or the
pad left on the other side is at most ``d(k'-1)``); otherwise the static ``H`` (graph shapes
or ``input_shapes``) must prove it, and if it cannot, that axis is cut only as far as its pads
absorb (``r <= pad // d``, no crop) and the kept zero taps are listed under ``refused``.
Convs reading the same tensor with the same crop share one Slice.

ConvTranspose: the full (unpadded) output is ``F[j] = sum_{i*s + t*d = j} x[i] w[t]`` and the
output is ``y[m] = F[m + lo]`` for ``m < (H-1)*s + output_padding + d(k-1) + 1 - lo - hi``.
Dropping ``r_lo`` leading zero taps gives ``F'[j] = F[j + d*r_lo]``, so ``lo' = lo - d*r_lo``;
dropping ``r_hi`` trailing zero taps only removes positions of ``F`` past ``F'``'s end, which
only zero taps reach, and ``hi' = hi - d*r_hi`` keeps the output size (same arithmetic as the
Conv). A negative ``lo'`` / ``hi'`` would mean output positions that hold only the bias, which
no pad attribute can produce (``output_padding`` must stay below the stride), so ConvTranspose
cuts at most ``lo // d`` leading and ``hi // d`` trailing taps; the zero taps it keeps are
listed under ``refused`` with that reason. ``output_shape`` (pads derived from it) is refused.

Left alone, with their reason in ``stats["refused"]``: ``auto_pad`` other than NOTSET ("run
explicit_pads first"), weights that are not constants or are overridable graph inputs, and
kernels that are entirely zero (a channel pass removes those filters; cutting would leave a
0-sized kernel). Weights read by other nodes too are copied, never edited in place.
``input_shapes`` is only read to prove that a crop fits (above); nothing else needs sizes.
"Exact" is for finite inputs: a cut zero tap no longer turns an infinite input into NaN.

``stats["convs"]``: ``{"node", "op", "kernel_before", "kernel_after", "pads_before",
"pads_after", "cropped_axes"}`` per cut node (``cropped_axes``: tensor axes the Slice crops).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from .base import Pass, PassResult
from .explicit_pads import StaticSizes
from .graph import opset_version, unique_name

CONVS = ("Conv", "ConvTranspose")
INT64_MAX = int(np.iinfo(np.int64).max)


def _attr_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def zero_borders(weight: np.ndarray) -> list[tuple[int, int]] | None:
    """``(r_lo, r_hi)`` per spatial axis of ``weight[C0, C1, k...]``; None if all of it is zero."""
    nonzero = np.any(weight != 0, axis=(0, 1))
    if not nonzero.any():
        return None
    n = nonzero.ndim
    out = []
    for i in range(n):
        profile = np.any(nonzero, axis=tuple(j for j in range(n) if j != i)) if n > 1 else nonzero
        hits = np.flatnonzero(profile)
        out.append((int(hits[0]), int(profile.size - 1 - hits[-1])))
    return out


def _pads(node: gs.Node, n: int) -> list[int]:
    return [int(p) for p in node.attrs.get("pads", [0] * (2 * n))]


def _check_conv(node: gs.Node) -> str | None:
    """A contract violation of ``node`` (an invalid model, not a refusal), or None."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if not isinstance(w, gs.Constant):
        return None
    shape = tuple(int(d) for d in w.shape)
    if len(shape) < 3:
        return f"weight shape {list(shape)} has no spatial axes"
    n = len(shape) - 2
    if any(k < 1 for k in shape[2:]):
        return f"weight shape {list(shape)} has a kernel dim < 1"
    if "kernel_shape" in node.attrs and [int(k) for k in node.attrs["kernel_shape"]] != list(shape[2:]):
        return f"kernel_shape {list(node.attrs['kernel_shape'])} disagrees with weight shape {list(shape)}"
    pads = _pads(node, n)
    if len(pads) != 2 * n:
        return f"pads {pads} do not have 2*{n} entries"
    if any(p < 0 for p in pads):
        return f"negative pads {pads}"
    return None


@dataclasses.dataclass(frozen=True)
class CutKernelBorders(Pass):
    """See the module docstring."""

    name = "cut_kernel_borders"
    input_shapes: Mapping[str, Sequence[int]] | None = None

    def requires(self, graph: gs.Graph) -> None:
        self._check(graph)

    def ensures(self, graph: gs.Graph) -> None:
        self._check(graph)

    def _check(self, graph: gs.Graph) -> None:
        for node in graph.nodes:
            if node.op in CONVS:
                problem = _check_conv(node)
                if problem:
                    raise self.fail(problem, node)

    def call(self, graph: gs.Graph) -> PassResult:
        convs: list[dict[str, Any]] = []
        refused: list[dict[str, str]] = []
        slices: dict[tuple, gs.Variable] = {}
        sizes = StaticSizes(graph, self.input_shapes)
        for node in [n for n in graph.nodes if n.op in CONVS]:
            plan = self._plan(graph, node, refused)
            if plan is None:
                continue
            borders, weight = plan
            n = len(borders)
            pads = _pads(node, n)
            dil = [int(d) for d in node.attrs.get("dilations", [1] * n)]
            if node.op == "Conv":
                borders = self._fit_crops(node, borders, weight.shape[2:], pads, dil, sizes, refused)
                if not any(lo or hi for lo, hi in borders):
                    continue
            new_pads = [pads[i] - dil[i] * borders[i][0] for i in range(n)] + \
                       [pads[n + i] - dil[i] * borders[i][1] for i in range(n)]
            crops = [(2 + i, max(0, -new_pads[i]), max(0, -new_pads[n + i])) for i in range(n)
                     if new_pads[i] < 0 or new_pads[n + i] < 0]
            new_pads = [max(0, p) for p in new_pads]
            self._set_weight(graph, node, weight[(slice(None), slice(None)) + tuple(
                slice(lo, weight.shape[2 + i] - hi) for i, (lo, hi) in enumerate(borders))])
            node.attrs["pads"] = new_pads
            if "kernel_shape" in node.attrs:
                node.attrs["kernel_shape"] = [int(k) for k in node.inputs[1].values.shape[2:]]
            if crops:
                node.inputs[0] = self._crop(graph, node, tuple(crops), slices)
            convs.append({"node": node.name, "op": node.op, "kernel_before": list(weight.shape[2:]),
                          "kernel_after": [int(k) for k in node.inputs[1].values.shape[2:]],
                          "pads_before": pads, "pads_after": new_pads,
                          "cropped_axes": [axis for axis, _, _ in crops]})
        return PassResult(graph, bool(convs), {"convs": convs, "refused": refused})

    def _plan(self, graph: gs.Graph, node: gs.Node,
              refused: list[dict[str, str]]) -> tuple[list[tuple[int, int]], np.ndarray] | None:
        """Borders to cut (some non-zero) and the weight, or None (refusal recorded if any)."""
        def refuse(reason: str) -> None:
            refused.append({"node": node.name, "reason": reason})

        mode = _attr_str(node.attrs.get("auto_pad", "NOTSET"))
        w = node.inputs[1]
        if mode != "NOTSET":
            return refuse(f"auto_pad {mode}: run explicit_pads first")
        if not isinstance(w, gs.Constant):
            return refuse("weight not constant")
        if w in graph.inputs:
            return refuse(f"weight '{w.name}' is also a graph input, so callers may override it")
        if node.op == "ConvTranspose" and "output_shape" in node.attrs:
            return refuse("ConvTranspose has output_shape; its pads are derived from it")
        weight = np.asarray(w.values)
        borders = zero_borders(weight)
        if borders is None:
            return refuse("kernel is entirely zero; left for the channel passes to remove")
        if node.op == "ConvTranspose":
            borders = self._transpose_limit(node, borders, refuse)
        if not any(lo or hi for lo, hi in borders):
            return None
        return borders, weight

    @staticmethod
    def _fit_crops(node: gs.Node, borders: list[tuple[int, int]], kernel: Sequence[int], pads: list[int],
                   dil: list[int], sizes: StaticSizes, refused: list[dict[str, str]]) -> list[tuple[int, int]]:
        """Borders whose crops provably leave >= 1 input element; others cut only into the pads."""
        n = len(borders)
        out = []
        for i, (r_lo, r_hi) in enumerate(borders):
            lo, hi, d = pads[i], pads[n + i], dil[i]
            c_lo, c_hi = max(0, d * r_lo - lo), max(0, d * r_hi - hi)
            if c_lo or c_hi:
                # the original conv is valid, so H >= d(k-1) + 1 - lo - hi; a static H may prove more
                h_min = max(1, d * (kernel[i] - 1) + 1 - lo - hi)
                h = h_min if h_min - c_lo - c_hi >= 1 else sizes.dim(node.inputs[0], 2 + i)
                if h is None or h - c_lo - c_hi < 1:
                    keep = (r_lo - min(r_lo, lo // d), r_hi - min(r_hi, hi // d))
                    why = (f"the input has only {h} elements" if h is not None else
                           f"the input is not known to have more than {c_lo + c_hi} elements (give input shapes)")
                    refused.append({"node": node.name, "reason": (
                        f"axis {2 + i}: {keep[0]} leading / {keep[1]} trailing zero taps kept: cropping "
                        f"{c_lo} + {c_hi} elements needs a longer input; {why}")})
                    r_lo, r_hi = r_lo - keep[0], r_hi - keep[1]
            out.append((r_lo, r_hi))
        return out

    @staticmethod
    def _transpose_limit(node: gs.Node, borders: list[tuple[int, int]], refuse) -> list[tuple[int, int]]:
        n = len(borders)
        pads = _pads(node, n)
        dil = [int(d) for d in node.attrs.get("dilations", [1] * n)]
        out = []
        for i, (lo, hi) in enumerate(borders):
            lo_ok, hi_ok = min(lo, pads[i] // dil[i]), min(hi, pads[n + i] // dil[i])
            if (lo_ok, hi_ok) != (lo, hi):
                refuse(f"ConvTranspose axis {2 + i}: zero taps (leading {lo}, trailing {hi}) kept "
                       f"(leading {lo - lo_ok}, trailing {hi - hi_ok}): cutting them needs negative pads, "
                       "i.e. output positions holding only the bias")
            out.append((lo_ok, hi_ok))
        return out

    @staticmethod
    def _set_weight(graph: gs.Graph, node: gs.Node, values: np.ndarray) -> None:
        w = node.inputs[1]
        values = np.ascontiguousarray(values)
        if len(w.outputs) == 1 and w not in graph.outputs:
            w.values = values
        else:  # another reader still needs the uncut weight
            node.inputs[1] = gs.Constant(unique_name(graph, f"{w.name}__{node.name}"), values)

    @staticmethod
    def _crop(graph: gs.Graph, node: gs.Node, crops: tuple, cache: dict[tuple, gs.Variable]) -> gs.Variable:
        x = node.inputs[0]
        key = (x.name, crops)
        if key in cache:
            return cache[key]
        axes = [a for a, _, _ in crops]
        starts = [lo for _, lo, _ in crops]
        ends = [-hi if hi else INT64_MAX for _, _, hi in crops]
        name = unique_name(graph, f"{x.name}__crop")
        out = gs.Variable(name, dtype=x.dtype)
        if opset_version(graph) >= 10:
            inputs = [x] + [gs.Constant(unique_name(graph, f"{name}_{what}"), np.array(v, dtype=np.int64))
                            for what, v in (("starts", starts), ("ends", ends), ("axes", axes))]
            slice_node = gs.Node("Slice", name=unique_name(graph, name), inputs=inputs, outputs=[out])
        else:
            slice_node = gs.Node("Slice", name=unique_name(graph, name), inputs=[x], outputs=[out],
                                 attrs={"starts": starts, "ends": ends, "axes": axes})
        graph.nodes.insert(graph.nodes.index(node), slice_node)
        cache[key] = out
        return out


def cut_kernel_borders(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> PassResult:
    """Cut every all-zero kernel border out of every Conv / ConvTranspose (see the module docstring)."""
    return CutKernelBorders(input_shapes)(graph)
