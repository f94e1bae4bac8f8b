"""Ring calibration: a ring's importance is replaced by its measured loss increase in the channel
gates' units. A ring whose weights are all zero costs nothing when dropped, so its factor is 0;
a ring that carries the layer's weights gets a positive factor; channel factors stay 1 and the
BN running statistics are restored."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from onnx import numpy_helper  # noqa: E402

from smof_onnx.data import CalibrationData  # noqa: E402
from smof_onnx.learn.executor import OnnxModule  # noqa: E402
from smof_onnx.learn.masking import Masks  # noqa: E402
from smof_onnx.learn.ring_calibration import calibrate_rings  # noqa: E402
from smof_onnx.selection.select import prepare  # noqa: E402
from tests.test_selection_gates import tiny_cnn  # noqa: E402


def test_a_ring_that_holds_nothing_costs_nothing_and_channels_keep_their_scale():
    p = prepare(tiny_cnn(), None, multiple=1)
    w2 = next(i for i in p.model.graph.initializer if i.name == p.model.graph.node[
        [n.name for n in p.model.graph.node].index("conv2")].input[1])
    arr = numpy_helper.to_array(w2).copy()
    arr[:, :, 0, :] = arr[:, :, 2, :] = 0  # conv2's axis-0 border holds nothing
    w2.CopyFrom(numpy_helper.from_array(arr, w2.name))
    rng = np.random.default_rng(0)
    data = CalibrationData({"x": rng.standard_normal((48, 3, 8, 8)).astype(np.float32)}, None, "random")
    teacher = OnnxModule(p.model).eval()
    student = OnnxModule(p.model).train()
    masks = Masks(p.space, student)
    h = np.ones(p.space.size)
    imp = np.ones(p.space.size)
    buffers = {k: b.clone() for k, b in student.named_buffers()}
    factor = calibrate_rings(p.space, student, masks, data, teacher, imp, h, batch=16, samples=48)
    ring = {(k.node, k.axis): k.index for k in p.space.kernel if k.level == 1}
    assert factor[ring[("conv2", 0)]] == 0.0
    assert factor[ring[("conv2", 1)]] > 0.0 and factor[ring[("conv3", 0)]] > 0.0
    assert np.all(factor[len(p.space.kernel):] == 1.0)
    assert float(masks.m[:-1].sum()) == h.sum()  # left holding h
    for k, b in student.named_buffers():
        assert torch.equal(b, buffers[k])


def test_without_a_teacher_nothing_is_calibrated():
    p = prepare(tiny_cnn(), None, multiple=1)
    student = OnnxModule(p.model).train()
    data = CalibrationData({"x": np.zeros((8, 3, 8, 8), np.float32)}, None, "zeros")
    factor = calibrate_rings(p.space, student, Masks(p.space, student), data, None, np.ones(p.space.size),
                             np.ones(p.space.size), batch=8)
    assert np.all(factor == 1.0)


def test_a_forward_budget_bounds_the_samples_per_pass_but_never_below_one_batch():
    """Counted forward samples: unbounded, every pass sees all 48; with a budget of 2 samples a
    pass, each pass sees one batch of 16 (the floor); the factors still come out finite."""
    p = prepare(tiny_cnn(), None, multiple=1)
    rng = np.random.default_rng(0)
    data = CalibrationData({"x": rng.standard_normal((48, 3, 8, 8)).astype(np.float32)}, None, "random")
    teacher = OnnxModule(p.model).eval()
    student = OnnxModule(p.model).train()
    seen = []
    student.register_forward_hook(lambda mod, args, out: seen.append(int(args[0].shape[0])))
    passes = 1 + len(p.space.axes) + len(p.space.families)
    ones = np.ones(p.space.size)
    calibrate_rings(p.space, student, Masks(p.space, student), data, teacher, ones, ones, batch=16, samples=48)
    assert sum(seen) == 48 * passes
    seen.clear()
    factor = calibrate_rings(p.space, student, Masks(p.space, student), data, teacher, ones, ones, batch=16,
                             samples=48, budget=2 * passes)
    assert sum(seen) == 16 * passes and np.isfinite(factor).all()
