"""The benchmark's peer wrappers (bench/peers.py) reach the FLOPs target they are asked for.

Specification:
- ``bisect_knob`` returns the smallest knob whose ratio is at or under the target, and says
  ``reached=False`` (with the model at the largest knob) when no knob gets there.
- Torch-Pruning, onnxsim ``apply_structured_pruning`` and ``apply_structured_wanda_pruning`` each
  return an ONNX model whose FLOPs, counted independently by ``count_cost``, are at or under the
  target and no more than the granularity of a tiny net below it; the model runs under ONNX
  Runtime with the original's interface and really has fewer channels.
- Torch-Pruning's fine-tune changes the pruned weights (it trained) and the exported model is the
  fine-tuned one.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fmnist_models  # noqa: E402
import peers  # noqa: E402
from smof_onnx.passes.analysis.flops import count_cost  # noqa: E402

SHAPE = (1, 1, 12, 12)
TARGET = 0.5
# A tiny net's channel counts are 8..32, so one channel step moves its FLOPs by a few percent;
# the uniform Torch-Pruning ratio moves every layer at once, hence the wider floor.
FLOOR = 0.12


class Tiny(nn.Module):
    """conv-bn-relu stem, one residual block, a strided conv, global pool, linear classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.c2(self.c1(x)) + x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.down(x), 1), 1))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    module = Tiny().eval()
    # Non-identity BN, as after training: with zero shifts every folded bias is the same zero
    # vector, the exporter shares one initializer through Identity nodes, and onnxsim then
    # declines those chains.
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return module


def export(module) -> onnx.ModelProto:
    return fmnist_models.export_onnx(module, input_shape=SHAPE)


def ratio(model: onnx.ModelProto, base: onnx.ModelProto) -> float:
    return count_cost(model, None).flops / count_cost(base, None).flops


def conv_channels(model: onnx.ModelProto) -> int:
    return sum(layer.out_channels for layer in count_cost(model, None).layers if layer.op == "Conv")


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


def assert_hits_target(pruned: onnx.ModelProto, base: onnx.ModelProto, settings: dict) -> None:
    r = ratio(pruned, base)
    assert settings["reached"] is True
    assert r <= TARGET + 1e-12, r
    assert r >= TARGET - FLOOR, r
    assert settings["flops_ratio"] == pytest.approx(r)
    assert conv_channels(pruned) < conv_channels(base)
    x = np.random.default_rng(0).standard_normal((3, *SHAPE[1:])).astype(np.float32)
    out = run(pruned, x)
    assert out.shape == (3, 10) and np.isfinite(out).all()
    onnx.checker.check_model(pruned, full_check=True)


def test_bisect_finds_the_smallest_knob_meeting_the_target():
    # ratio falls in steps of 0.1 as the knob rises: knob in [0.5, 0.6) -> 0.5
    def step(k):
        return round(1.0 - np.floor(k * 10) / 10, 10)

    product, knob, r, trace, reached = peers.bisect_knob(lambda k: k, step, 0.5, 0.0, 0.95)
    assert reached and r == 0.5 and product == knob
    assert 0.5 <= knob < 0.5 + 2 * peers.KNOB_TOL
    assert all(t["ratio"] == step(t["knob"]) for t in trace)


def test_bisect_reports_an_unreachable_target():
    product, knob, r, trace, reached = peers.bisect_knob(lambda k: k, lambda k: 1.0 - 0.5 * k, 0.3, 0.0, 0.9)
    assert not reached and knob == pytest.approx(0.9) and r == pytest.approx(0.55) and product == knob


def test_bisect_ignores_a_ratio_that_rises_again_at_the_top():
    # below the target only in [0.4, 0.8); the top of the range rebounds to 0.9
    def bumpy(k):
        return 0.9 if k >= 0.8 else 1.0 - k

    product, knob, r, trace, reached = peers.bisect_knob(lambda k: k, bumpy, 0.6, 0.0, 1.0)
    assert reached and 0.4 <= knob < 0.4 + 2 * peers.KNOB_TOL and r <= 0.6


def test_torch_pruning_reaches_the_flops_target_and_finetunes(tiny):
    base = export(tiny)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, *SHAPE[1:])).astype(np.float32)
    y = rng.integers(0, 10, 64)
    cfg = peers.FinetuneConfig(epochs=1, batch_size=32, lr=1e-2)
    pruned, settings = peers.torch_pruning(tiny, TARGET, export=export, x=x, y=y, finetune_cfg=cfg,
                                           example_shape=SHAPE)
    assert_hits_target(pruned, base, settings)
    assert settings["finetune"]["epochs"] == 1 and settings["finetune"]["images"] == 64
    # the fine-tune trained: the exported model differs from the pruned-only one at the same ratio
    pruned_only = export(peers.tp_prune(tiny, settings["pruning_ratio"], SHAPE))
    assert ratio(pruned_only, base) == pytest.approx(ratio(pruned, base))
    assert np.abs(run(pruned, x[:4]) - run(pruned_only, x[:4])).max() > 1e-4
    # the original module is untouched
    assert conv_channels(export(tiny)) == conv_channels(base)


def test_torch_pruning_round_to_keeps_multiples(tiny):
    base = export(tiny)
    pruned, settings = peers.torch_pruning(tiny, TARGET, export=export, round_to=8, example_shape=SHAPE)
    assert settings["round_to"] == 8 and settings["flops_ratio"] <= TARGET
    counts = [layer.out_channels for layer in count_cost(pruned, None).layers if layer.op == "Conv"]
    assert all(c % 8 == 0 for c in counts), counts
    assert ratio(pruned, base) <= TARGET


def test_onnxsim_structured_reaches_the_flops_target(tiny):
    base = export(tiny)
    pruned, settings = peers.onnxsim_structured(base, TARGET)
    assert_hits_target(pruned, base, settings)
    assert 0 < settings["sparsity"] < 1 and settings["data"] == "none"


def test_onnxsim_wanda_reaches_the_flops_target(tiny):
    base = export(tiny)
    x = np.random.default_rng(1).standard_normal((64, *SHAPE[1:])).astype(np.float32)
    pruned, settings = peers.onnxsim_wanda(base, TARGET, x, batch=32)
    assert_hits_target(pruned, base, settings)
