"""How far the paper's cost model d * w^2 * r^2 is from the counted FLOPs of the cut model.

    python bench/three_d_cost.py [--models resnet_basic,resnet56,resnet_bottleneck,mobilenet_v2,yolo]

For each model and dimension alone (the other two at 1): depth ``d`` (fraction of residual blocks
kept, removed in the analysis's order), a uniform channel cut keeping the fraction ``w_c`` of
every gated channel family (multiple 1), and resolution ``r`` (in-graph resize at a grid scale).
Prints the paper's prediction (``d``, ``w_c^2``, ``r^2``), the counted FLOPs ratio of the cut
model (:func:`count_cost` after :func:`pipeline.cut`) and their quotient. ``--method 3d`` plans
with the counted cost (:mod:`smof_onnx.selection.plan_space`); this table is why.
Architectures: the zoo's (:mod:`models.zoo`), random weights (costs do not depend on them);
``resnet56`` is :mod:`bench.fmnist_models`'s Fashion-MNIST ResNet-56 layout, untrained.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402

from smof_onnx.passes import graph as pgraph  # noqa: E402
from smof_onnx.passes import pipeline  # noqa: E402
from smof_onnx.passes.analysis.flops import count_cost  # noqa: E402
from smof_onnx.selection.plan_space import plan_space  # noqa: E402
from smof_onnx.selection.select import prepare  # noqa: E402

MODELS = ("resnet_basic", "resnet56", "resnet_bottleneck", "mobilenet_v2", "yolo")


def load(name: str):
    if name == "resnet56":
        import fmnist_models as fm

        return fm.export_onnx(fm.build("resnet56")), {"input": list(fm.INPUT_SHAPE)}
    from tests import cases

    return cases.load_zoo(name), {"input": list(cases.zoo_input_shape(name))}


def uniform_width(model, shapes, wc: float) -> float:
    problem = prepare(model, shapes, multiple=1)
    h = np.ones(problem.space.size)
    for fam in problem.space.families:
        n = fam.base + len(fam.gates)
        keep = min(len(fam.gates), max(1, round(wc * n) - fam.base))
        h[list(fam.gates[keep:])] = 0.0
    zeroed = problem.space.apply(problem.model, h)
    cut = pgraph.to_model(pipeline.cut(pgraph.to_graph(zeroed), shapes).graph)
    return count_cost(cut, shapes).flops / problem.cost.flops


def rows(name: str) -> list[list]:
    model, shapes = load(name)
    canon = pgraph.to_model(pipeline.canonicalize(pgraph.to_graph(model), shapes).graph)
    space = plan_space(canon, shapes)
    out = []
    if "depth" in space.dims:
        for d in dict.fromkeys(space.depth_level(t) for t in (0.75, 0.5, 0.25)):
            out.append([name, "depth", f"d={d:.2f}", d, space.counted(d, 1.0)])
    for wc in (0.75, 0.5, 0.25):
        out.append([name, "width (uniform)", f"w_c={wc:.2f}", wc * wc, uniform_width(canon, shapes, wc)])
    if "resolution" in space.dims:
        for target in (0.75, 0.5):
            r = space.snap(target)
            out.append([name, "resolution", f"r={r:.3f}", r * r, space.counted(1.0, r)])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args(argv)
    print("| model | dimension | point | paper d*w^2*r^2 | counted | counted / paper |")
    print("|---|---|---|---:|---:|---:|")
    for name in args.models.split(","):
        for m, dim, point, paper, counted in rows(name):
            print(f"| {m} | {dim} | {point} | {paper:.3f} | {counted:.3f} | {counted / paper:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
