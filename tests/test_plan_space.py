"""plan_space: the depths and resolutions a model allows, and the cost of each point.

The oracle for the cost is the counted FLOPs of the model the space builds at that point
(:meth:`PlanSpace.variant`: blocks zeroed, input resized, then cut), against the space's own
prediction from per-block FLOPs tables; the interface of every variant is the original's.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from smof_onnx.errors import UsageError
from smof_onnx.passes.analysis.flops import count_cost
from smof_onnx.passes.graph import to_graph, to_model
from smof_onnx.passes.pipeline import canonicalize
from smof_onnx.selection.plan_space import plan_space
from tests import cases
from tests.helpers import run


def _space(name, **kw):
    shapes = {"input": list(cases.zoo_input_shape(name))}
    model = to_model(canonicalize(to_graph(cases.load_zoo(name)), shapes).graph)
    return model, shapes, plan_space(model, shapes, **kw)


@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck", "mobilenet_v2", "yolo"])
def test_predicted_cost_is_the_counted_flops_of_the_cut_variant(name):
    model, shapes, space = _space(name)
    assert "depth" in space.dims and "resolution" in space.dims
    full = count_cost(model, shapes).flops
    rng = np.random.default_rng(len(name))
    depths = [space.depths[0], space.depths[len(space.depths) // 2], 1.0]
    for d in depths:
        for r in (space.scales[0], space.scales[rng.integers(len(space.scales))], 1.0):
            v = space.variant(model, d, r)
            onnx.checker.check_model(v)
            assert count_cost(v, shapes).flops / full == pytest.approx(space.counted(d, r), rel=1e-9)
            assert space.cost(d, 0.5, r) == pytest.approx(0.5 * space.counted(d, r))
            x = rng.standard_normal(shapes["input"]).astype(np.float32)
            before, after = run(model, {"input": x}), run(v, {"input": x})
            assert {k: a.shape for k, a in before.items()} == {k: a.shape for k, a in after.items()}  # same interface


def test_depth_removes_the_blocks_in_the_given_order_and_keeps_one():
    model, shapes, space = _space("resnet_basic")
    order = list(reversed(space.blocks))
    _, _, ordered = _space("resnet_basic", order=order)
    assert ordered.removed(1.0) == () and len(ordered.depths) == 9 and ordered.depths[0] == pytest.approx(1 / 9)
    assert ordered.removed(ordered.depths[0]) == tuple(order[:8])
    assert ordered.removed(7 / 9) == tuple(order[:2])
    with pytest.raises(ValueError, match="permutation"):
        plan_space(model, shapes, order=order[:3])


def test_costs_are_monotone_in_depth_and_resolution():
    _, _, space = _space("resnet_bottleneck")
    grid = np.linspace(space.r_min, 1.0, 23)
    for d in space.depths:
        c = [space.counted(d, r) for r in grid]
        assert all(b >= a - 1e-12 for a, b in zip(c, c[1:]))
    for r in space.scales:
        c = [space.counted(d, r) for d in space.depths]
        assert all(b >= a - 1e-12 for a, b in zip(c, c[1:]))
    assert space.snap(0.77) <= 0.77 and space.snap(0.77) in space.scales


def test_sizes_the_graph_cannot_run_at_are_left_out_of_the_grid():
    """The YOLO-style neck concatenates upsampled maps: only sizes whose stride arithmetic works remain."""
    _, shapes, space = _space("yolo")
    side = shapes["input"][2]
    assert 1 < len(space.scales) < side // 2 + 1
    assert all(space.resolution_sizes[s]["input"] == [round(side * s)] * 2 for s in space.scales)


def test_a_model_without_blocks_and_with_a_size_bound_head_says_why_for_each_dimension():
    """VGG: no residual Add, Flatten of the spatial map into a Gemm."""
    _, _, space = _space("vgg")
    assert space.dims == ("width",)
    assert "no removable residual block" in space.unavailable["depth"]
    assert "Flatten" in space.unavailable["resolution"] or "Gemm" in space.unavailable["resolution"]
    assert space.depths == (1.0,) and space.scales == (1.0,)


def test_bad_dims_and_min_resolution_are_usage_errors():
    model, shapes, _ = _space("resnet_basic")
    with pytest.raises(UsageError, match="--dims"):
        plan_space(model, shapes, dims=("depth", "height"))
    with pytest.raises(UsageError, match="--min-resolution"):
        plan_space(model, shapes, min_resolution=1.5)
    _, _, small = _space("resnet_basic", min_resolution=0.99)
    assert "resolution" in small.unavailable
