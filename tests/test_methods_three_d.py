"""--method 3d and `smof-onnx plan`: depth, width and resolution planned together.

Fast checks refuse bad input before any training; one end-to-end run on the embedded default
(a trained Fashion-MNIST ResNet-20, 512 labelled images) checks the contract: the target met,
the cut exact, the plan (samples, fit, chosen point) reported, held-out accuracy above a bound.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from smof_onnx import api
from smof_onnx.cli import main
from smof_onnx.errors import DataError, UsageError
from smof_onnx.methods.three_d import _sample_points
from smof_onnx.passes.graph import to_graph, to_model
from smof_onnx.passes.pipeline import canonicalize
from smof_onnx.selection.plan_space import plan_space
from tests import cases

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"
MODEL, CALIB = DEFAULT / "resnet20_fmnist.onnx", DEFAULT / "calib.npz"
FAST = dict(plan_steps=2, epochs=1, finetune_epochs=1, threads=1, no_latency=True, progress_bars=False)


def _zoo(name):
    shapes = {"input": list(cases.zoo_input_shape(name))}
    return cases.load_zoo(name), shapes


def _random_data(shape, n=64):
    return {"input": np.random.default_rng(0).standard_normal((n, *shape[1:])).astype(np.float32)}


def test_samples_cover_each_dimension_at_three_levels_and_mix_the_middle_ones():
    model, shapes = _zoo("resnet_basic")
    canon = to_model(canonicalize(to_graph(model), shapes).graph)
    pts = _sample_points(plan_space(canon, shapes))
    assert len(pts) == 13 and (1.0, 1.0, 1.0) not in pts
    for axis in range(3):  # three single-dimension points per axis
        assert sum(1 for p in pts if p[axis] < 1 and sum(x < 1 for x in p) == 1) == 3
    assert sum(1 for p in pts if all(x < 1 for x in p)) == 1
    two = _sample_points(plan_space(canon, shapes, dims=("width", "resolution")))
    assert len(two) == 7 and all(p[0] == 1.0 for p in two)


def test_options_of_3d_are_refused_by_other_methods_and_latency_targets_by_3d():
    with pytest.raises(UsageError, match="--dims is not used by --method smof"):
        api.compress(str(MODEL), data=str(CALIB), method="smof", dims="depth")
    with pytest.raises(UsageError, match="--target-latency is not used by --method 3d"):
        api.compress(str(MODEL), data=str(CALIB), method="3d", target_latency=0.5)
    with pytest.raises(UsageError, match="--dims depth,height"):
        api.compress(str(MODEL), data=str(CALIB), method="3d", dims="depth,height")
    with pytest.raises(UsageError, match="--min-resolution"):
        api.compress(str(MODEL), data=str(CALIB), method="3d", min_resolution=0)
    with pytest.raises(DataError, match="--method 3d learns from data"):
        api.compress(str(MODEL), method="3d")


def test_no_usable_dimension_names_each_reason_before_training():
    model, shapes = _zoo("vgg")
    with pytest.raises(UsageError) as err:
        api.compress(model, data=_random_data(shapes["input"]), method="3d", dims="depth,resolution", **FAST)
    msg = str(err.value)
    assert "no dimension to plan" in msg and "residual block" in msg and ("Flatten" in msg or "Gemm" in msg)


def test_an_unreachable_target_is_an_error_before_training(monkeypatch):
    import smof_onnx.methods.three_d as three_d

    monkeypatch.setattr(three_d, "rank_blocks", lambda *a: pytest.fail("trained before refusing"))
    with pytest.raises(UsageError, match="out of reach of --method 3d"):
        api.compress(str(MODEL), data=str(CALIB), method="3d", target_flops=0.1, dims="resolution",
                     min_resolution=0.8, **FAST)


# Measured here with these options (seed 0): 0.922 on the 51 held-out images (original 0.980);
# the bound leaves 3 images of room for another torch build's arithmetic.
ACCURACY_BOUND = 0.86


def test_end_to_end_on_the_default_model_meets_the_target_exactly_with_a_reported_plan(tmp_path):
    out = tmp_path / "small.onnx"
    cut, report = api.compress(str(MODEL), out, data=str(CALIB), method="3d", target_flops=0.5,
                               report_path=tmp_path / "r.json", **{**FAST, "plan_steps": 30, "finetune_epochs": 2})
    assert out.exists() and report["flops"]["ratio"] <= 0.5 + 0.01 and report["target_met"]
    assert report["verify"]["max_rel_err"] <= 1e-5
    plan = report["method"]["plan"]
    assert len(plan["samples"]) == 14 and plan["fit"]["rms"] >= 0
    point = plan["point"]
    assert point["cost"] <= 0.5 + 1e-9 and point["d"] in plan["space"]["depths"]
    assert report["method"]["removed_blocks"] == point["removed_blocks"]
    onnx.checker.check_model(onnx.load(str(out)))
    assert report["quality"]["accuracy_after"] >= ACCURACY_BOUND, report["quality"]


def test_plan_command_writes_the_plan_and_its_picture(tmp_path, capsys):
    js, png = tmp_path / "sub" / "plan.json", tmp_path / "plan.png"
    code = main(["plan", str(MODEL), "--data", str(CALIB), "--target-flops", "0.4", "--plan-steps", "2",
                 "--threads", "1", "--max-samples", "256", "-o", str(js), "--png", str(png)])
    assert code == 0
    plan = json.loads(js.read_text())
    assert {"samples", "fit", "solution", "point", "space"} <= set(plan) and plan["point"]["cost"] <= 0.4 + 1e-9
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "3d plan at 0.4 of the FLOPs" in printed and "plan: d=" in printed
    assert not list(tmp_path.glob("**/*.tmp*"))


def test_plan_refuses_an_output_that_is_its_input(tmp_path):
    assert main(["plan", str(MODEL), "--data", str(CALIB), "-o", str(MODEL)]) == 2


def test_inspect_lists_the_residual_blocks_depth_can_remove():
    blocks = api.inspect(str(MODEL))["residual_blocks"]
    assert len(blocks) == 9 and sum(b["shortcut"] == "projection" for b in blocks) == 2
    assert all(b["flops"] > 0 and b["id"].endswith("Add") for b in blocks)
    model, shapes = _zoo("vgg")
    assert api.inspect(model, shapes)["residual_blocks"] == []


class _GridSpace:
    depths = (0.25, 0.5, 0.75, 1.0)
    scales = (0.5, 0.75, 1.0)

    def counted(self, d, r):  # a made-up cost, not d * r^2, so the check cannot lean on the paper's model
        return 0.1 + 0.9 * d * r ** 1.5


def test_the_pruned_point_is_the_best_realisable_one_and_spends_the_budget():
    from smof_onnx.methods.three_d import _on_grid

    space, target, w_min = _GridSpace(), 0.45, 0.3

    def fit(d, w, r):
        return 0.2 * d + 0.5 * w + 0.3 * r

    def realisable():
        for d in space.depths:
            for r in space.scales:
                w = min(1, target / space.counted(d, r))
                if w >= w_min:
                    yield d, r, w, w * space.counted(d, r)

    brute = max((round(fit(d, w, r), 12), cost, d, r) for d, r, w, cost in realisable())
    point = _on_grid(space, fit, target, w_min)
    assert (point["d"], point["r"]) == brute[2:]
    assert point["w"] * space.counted(point["d"], point["r"]) <= target + 1e-12
    flat = _on_grid(space, lambda d, w, r: 0.5, target, w_min)  # a flat fit: spend the most
    assert flat["w"] * space.counted(flat["d"], flat["r"]) == pytest.approx(max(c for *_, c in realisable()))


def test_torchrun_is_refused_with_what_to_do(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UsageError, match="runs in one process"):
        api.compress(str(MODEL), data=str(CALIB), method="3d", **FAST)
