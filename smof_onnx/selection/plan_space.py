"""The 3-D planner's space: which depths and resolutions a model allows, what each costs, and the
model at a point (d, r) of it. Torch-free.

    space = plan_space(canonical_model, shapes, dims, min_resolution, order=None)
    space.cost(d, w, r)          # counted FLOPs of the cut model, as a fraction of the original's
    space.variant(model, d, r)   # the depth-zeroed, resized, cut model (weights from ``model``)

Definitions (the paper fixes none of them beyond "depth, width, resolution"):
- **d**, depth: the fraction of the model's residual blocks kept
  (:func:`smof_onnx.passes.analysis.residual_blocks.find_residual_blocks`). Blocks go in
  ``order`` (least important first; :func:`smof_onnx.methods.three_d` measures it), so depth
  ``d`` removes the first ``round((1 - d) * n)`` blocks. The levels are ``k / n`` for
  ``k = 1..n`` kept: one block always stays, so d > 0 (the fit's axes are fractions in (0, 1]).
- **r**, resolution: the scale of the input's spatial size the model computes at
  (:func:`smof_onnx.passes.resize_input.resize_input`, interface kept). The levels are a grid of
  at most :data:`MAX_SIZES` scales ``s / S`` for integer sizes ``s`` of the larger spatial dim
  ``S`` between ``ceil(min_resolution * S)`` and ``S``; between them the cost is interpolated
  linearly, and a solution is snapped down to a grid scale (:meth:`PlanSpace.snap`), whose
  counted cost is then no more than the interpolated one.
- **w**, width: the share of the (d, r) model's FLOPs the width method keeps, so
  ``cost(d, w, r) = w * C(d, r) / C(1, 1)`` with ``C`` the *counted* FLOPs of the cut model
  (:func:`count_cost`): ``C(d, r) = F(r) - sum of the removed blocks' FLOPs at r``, exact because
  a block's FLOPs are exactly what its removal cuts (the residual analysis's contract). The
  paper's cost model ``d * w_c^2 * r^2`` (``w_c`` a channel fraction) is the same when width
  cuts are uniform channel cuts (``w = w_c^2``) and every block costs the same; docs/three-d.md
  measures how far it is from ``C`` on the zoo.
A dimension that is off (not asked for, or not possible: no residual block; a graph tied to its
input size) has the single level 1 and its reason in ``unavailable``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import onnx

from ..errors import UnsupportedModelError, UsageError
from ..passes import graph as pgraph
from ..passes import pipeline
from ..passes.analysis.flops import count_cost
from ..passes.analysis.residual_blocks import find_residual_blocks, zero_branches
from ..passes.base import PassError
from ..passes.resize_input import resize_input

DIMS = ("depth", "width", "resolution")
MAX_SIZES = 16  # resolution grid points: each costs one rewrite and one residual analysis


@dataclasses.dataclass(frozen=True)
class PlanSpace:
    dims: tuple[str, ...]                      # the dimensions the planner may use
    blocks: tuple[str, ...]                    # residual block ids, in removal order
    block_flops: dict                          # scale -> {block id: FLOPs at that scale}
    flops: dict                                # scale -> the model's FLOPs at that scale
    scales: tuple[float, ...]                  # the resolution grid, ascending, ending at 1.0
    shapes: dict                               # concrete input shapes
    unavailable: dict                          # dimension -> why the planner cannot use it
    resolution_sizes: dict                     # scale -> {input: [h, w]}

    @property
    def depths(self) -> tuple[float, ...]:
        n = len(self.blocks)
        return (1.0,) if n == 0 or "depth" not in self.dims else tuple(k / n for k in range(1, n + 1))

    @property
    def r_min(self) -> float:
        return self.scales[0]

    def removed(self, d: float) -> tuple[str, ...]:
        """The blocks depth ``d`` removes (the first of the order)."""
        n = len(self.blocks)
        return self.blocks[:n - max(1, round(d * n))] if n else ()

    def counted(self, d: float, r: float) -> float:
        """C(d, r) / C(1, 1): the cut model's FLOPs at depth d and a grid-interpolated scale r."""
        full = self.flops[1.0]
        removed = self.removed(d)

        def at(s: float) -> float:
            return self.flops[s] - sum(self.block_flops[s][b] for b in removed)

        r = min(max(r, self.scales[0]), 1.0)
        hi = next(i for i, s in enumerate(self.scales) if s >= r - 1e-12)
        if hi == 0 or abs(self.scales[hi] - r) < 1e-12:
            return at(self.scales[hi]) / full
        a, b = self.scales[hi - 1], self.scales[hi]
        t = (r - a) / (b - a)
        return ((1 - t) * at(a) + t * at(b)) / full

    def cost(self, d: float, w: float, r: float) -> float:
        return float(w) * self.counted(d, r)

    def snap(self, r: float) -> float:
        """The largest grid scale <= r (at least the smallest)."""
        return max([s for s in self.scales if s <= r + 1e-9] or [self.scales[0]])

    def depth_level(self, d: float) -> float:
        """The nearest depth level to ``d``."""
        return min(self.depths, key=lambda x: (abs(x - d), -x))

    def variant(self, model: onnx.ModelProto, d: float, r: float) -> onnx.ModelProto:
        """``model`` (this space's canonical graph, any weights) with depth ``d``'s blocks zeroed,
        computing at grid scale ``r``, then cut (:func:`pipeline.cut`): a smaller dense model with
        the original's interface."""
        out = zero_branches(model, self.removed(d), self.shapes) if self.removed(d) else model
        graph = pgraph.to_graph(out)
        if r < 1.0:
            graph = resize_input(graph, scale=r, keep_interface=True, input_shapes=self.shapes).graph
        return pgraph.to_model(pipeline.cut(graph, self.shapes).graph)

    def to_dict(self) -> dict:
        return {"dims": list(self.dims), "blocks": list(self.blocks), "depths": list(self.depths),
                "scales": list(self.scales), "unavailable": dict(self.unavailable),
                "resolution_sizes": {str(k): v for k, v in self.resolution_sizes.items()}}


def _scales(shapes: Mapping[str, Sequence[int]], min_resolution: float) -> list[float]:
    side = max(max(int(d) for d in s[2:]) for s in shapes.values() if len(s) == 4)
    sizes = list(range(max(1, math.ceil(min_resolution * side - 1e-9)), side + 1))
    if len(sizes) > MAX_SIZES:
        sizes = sorted({sizes[round(i)] for i in np.linspace(0, len(sizes) - 1, MAX_SIZES)})
    return [s / side for s in sizes]


def plan_space(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], dims: Sequence[str] = DIMS,
               min_resolution: float = 0.5, order: Sequence[str] | None = None) -> PlanSpace:
    """The space of ``model`` (canonical: :func:`pipeline.canonicalize`) over ``dims``; see the
    module docstring. ``order``: block ids, least important first (default: the analysis's)."""
    bad = sorted(set(dims) - set(DIMS))
    if bad or not dims:
        raise UsageError(f"--dims {','.join(dims)}: choose from {','.join(DIMS)}")
    if not 0 < min_resolution <= 1:
        raise UsageError(f"--min-resolution {min_resolution}: must be in (0, 1]")
    shapes = {k: [int(x) for x in v] for k, v in shapes.items()}
    unavailable: dict[str, str] = {}
    analysis = find_residual_blocks(model, shapes)
    blocks = tuple(b.id for b in analysis.blocks)
    if order is not None:
        if sorted(order) != sorted(blocks):
            raise ValueError(f"order {list(order)} is not a permutation of the blocks {list(blocks)}")
        blocks = tuple(order)
    if "depth" in dims and not blocks:
        reasons = "; ".join(f"{s['where']}: {s['reason']}" for s in analysis.skipped[:3])
        unavailable["depth"] = "the model has no removable residual block" + (f" ({reasons})" if reasons else "")
    grid = [1.0]
    if "resolution" in dims:
        grid = _scales(shapes, min_resolution) if any(len(s) == 4 for s in shapes.values()) else [1.0]
        if len(grid) < 2:
            unavailable["resolution"] = ("the model has no (N, C, H, W) input to resize" if grid == [1.0] else
                                         f"--min-resolution {min_resolution} leaves no smaller size")
            grid = [1.0]
    block_flops, flops, sizes, refused = {}, {}, {}, []
    for s in grid:
        try:  # a size the graph cannot run at (not a multiple of its stride) is left out of the grid
            m = model if s == 1.0 else pgraph.to_model(resize_input(pgraph.to_graph(model), scale=s,
                                                                    input_shapes=shapes).graph)
        except (UnsupportedModelError, PassError) as exc:
            refused.append(str(exc))
            continue
        flops[s] = count_cost(m, shapes).flops
        found = {b.id: b.flops for b in find_residual_blocks(m, shapes).blocks} if blocks else {}
        block_flops[s] = {b: found.get(b, 0) for b in blocks}
        sizes[s] = {k: [max(1, round(x * s)) for x in v[2:]] for k, v in shapes.items() if len(v) == 4}
    scales = sorted(flops)
    if len(grid) > 1 and len(scales) < 2:
        unavailable["resolution"] = refused[0]
    used = tuple(d for d in DIMS if d in dims and d not in unavailable)
    return PlanSpace(used, blocks, block_flops, flops, tuple(scales), shapes, unavailable, sizes)
