"""The learning stage's memory budget: parsing, the estimate, the batch it allows, the guard."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bench.memory_factor import dense_net
from smof_onnx.errors import UsageError
from smof_onnx.learn import memory
from smof_onnx.methods import CompressConfig

MiB = 1 << 20


def test_sizes_parse_and_bad_ones_name_the_option():
    assert memory.parse_memory("4G") == 4 << 30
    assert memory.parse_memory("512m") == 512 * MiB
    assert memory.parse_memory("1.5GiB") == 3 << 29
    assert memory.parse_memory("2 GB") == 2 << 30
    assert memory.parse_memory(1000) == 1000
    for bad in ("lots", "-1G", 0, "4X", True, float("nan")):
        with pytest.raises(UsageError, match="--max-memory"):
            memory.parse_memory(bad)
    with pytest.raises(UsageError, match="--max-memory"):
        CompressConfig(max_memory="four gigs")
    assert CompressConfig(max_memory="4G").max_memory == "4G"


def test_activation_bytes_count_every_node_output_of_one_sample():
    side = 64
    # oracle: the net's tensors by hand (conv1/relu1, conv2/relu2 at side/2 with 16 channels,
    # conv3/relu3 at side/4 with 32, conv4/sigmoid at side/4 with 1), float32
    want = 4 * (4 * 16 * (side // 2) ** 2 + 2 * 32 * (side // 4) ** 2 + 2 * (side // 4) ** 2)
    assert memory.activation_bytes(dense_net(side), {"x": (3, side, side)}) == want
    assert memory.activation_bytes(dense_net(side), {"x": (3, 2 * side, 2 * side)}) == 4 * want


def test_the_batch_is_lowered_to_fit_and_one_sample_that_does_not_fit_is_a_clear_error():
    model = dense_net(64)
    per = int(memory.ACTIVATION_FACTOR * memory.activation_bytes(model, {"x": (3, 64, 64)}))
    base = int(memory.WEIGHT_FACTOR * memory.weight_bytes(model))
    budget = base + 3 * 2 * per + 1  # three batch entries of two samples (mixing)
    plan = memory.plan(model, {"x": (3, 64, 64)}, 64, max_memory=budget, rss=0)
    assert plan.batch_size == 3 and plan.per_sample == per and "--batch-size 64 lowered to 3" in plan.reason
    rep = plan.report()
    assert rep["budget"] == budget and rep["estimated_peak"] <= budget and rep["batch_size"] == 3
    assert memory.plan(model, {"x": (3, 64, 64)}, 64, max_memory=budget, rss=0, mix=False).batch_size == 6
    assert memory.plan(model, {"x": (3, 64, 64)}, 2, max_memory=budget, rss=0).reason == ""
    with pytest.raises(UsageError, match="--max-memory .* too small for even one sample"):
        memory.plan(model, {"x": (3, 64, 64)}, 64, max_memory=base + per, rss=0)
    with pytest.raises(UsageError, match="its own batch of 4"):
        memory.plan(model, {"x": (3, 64, 64)}, 4, max_memory=budget, rss=0, fixed_batch=True)
    default = memory.plan(model, {"x": (3, 64, 64)}, 64, rss=100 * MiB, available=900 * MiB)
    assert default.budget == 500 * MiB and default.budget_source.startswith("50%")


def test_the_guard_splits_batches_while_over_budget_then_stops_clearly():
    readings = iter([50, 150, 150, 150, 150])
    guard = memory.MemoryGuard(100, rss=lambda: next(readings))
    guard.check(4, 0)
    assert guard.split == 1
    guard.check(4, 1)
    guard.check(4, 2)
    assert guard.split == 4 and guard.report()["micro_batches"] == 4 and guard.peak == 150
    with pytest.raises(UsageError, match="--max-memory .* even one sample at a time"):
        guard.check(4, 3)


def test_micro_batches_add_up_to_the_batch_gradient():
    torch = pytest.importorskip("torch")
    from smof_onnx.data import as_calibration
    from smof_onnx.learn import losses
    from smof_onnx.learn.executor import OnnxModule
    from smof_onnx.learn.settings import TrainSettings
    from tests.test_selection_gates import tiny_cnn

    model = tiny_cnn()
    x = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    data = as_calibration({"x": x}, model)
    teacher_module = OnnxModule(model).eval()
    with torch.no_grad():
        teacher_module.params[next(iter(teacher_module.params))].mul_(0.5)  # a teacher the student differs from
    feeds = [torch.from_numpy(x)]
    settings = TrainSettings(search_epochs=0, finetune_epochs=1, lr=1e-3, batch_size=8, seed=0, mix=False)
    grads = []
    for split in (1, 2, 3):
        module = OnnxModule(model)
        loss = losses.backward_batch(module, feeds, None, teacher_module, None, ["logits"], settings, split)
        grads.append((loss, [p.grad.clone() for p in module.parameters()]))
    for loss, g in grads[1:]:
        assert loss == pytest.approx(grads[0][0], rel=1e-5)
        for a, b in zip(g, grads[0][1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


CHILD = r"""
import json, resource, sys
import numpy as np
sys.path.insert(0, '.')
from bench.memory_factor import dense_net
from smof_onnx.learn.memory import current_rss
from smof_onnx.methods import METHODS
import torch  # loaded before the budget is set: it is part of the process, not of a batch
x = np.random.default_rng(0).random((6, 3, 608, 800), dtype=np.float32)
budget = current_rss() + 1200 * (1 << 20)
model = dense_net(608)
for d, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ('H', 'W')):
    d.dim_param = name  # a free size: the run is at 608x800, like the issue's detector
res = METHODS['smof'](model, {'x': x}, epochs=1, finetune_epochs=0, val_split=0.0,
                      progress_bars=False, max_memory=budget, threads=1, input_shapes={'x': [1, 3, 608, 800]})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({'budget': budget, 'peak': peak, 'memory': res.settings['memory'], 'latency': res.settings['latency']['source']}))
"""


@pytest.mark.slow  # about 40 s on a shared 2-core machine
def test_a_large_input_trains_within_its_budget_with_a_smaller_batch():
    """The issue's 800x608 case in small: 6 images, default batch (64), a budget that fits about
    three: the batch is lowered, training finishes, and the process's peak stays in the budget."""
    pytest.importorskip("torch")
    res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True,
                         text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    mem = out["memory"]
    assert mem["requested_batch_size"] == 64 and 1 <= mem["batch_size"] < 6 and "lowered" in mem["reason"]
    assert out["peak"] <= out["budget"], (out["peak"] / MiB, out["budget"] / MiB, mem, out["latency"])
    # the latency table that scores the gates is timed too, at a batch that fits (or not at all)
    assert out["latency"].startswith(("measured", "flops (timing")), out["latency"]
