"""Train-mode batch normalisation on folded convs: exact at attach, batch statistics in train
mode, an exact fold, gates acting after it, and the smof method's use of it."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from smof_onnx.learn.batchnorm import TrainBatchNorm  # noqa: E402
from smof_onnx.learn.executor import OnnxModule  # noqa: E402
from smof_onnx.learn.masking import Masks  # noqa: E402
from smof_onnx.selection.select import prepare  # noqa: E402
from tests.test_selection_gates import tiny_cnn  # noqa: E402


def _data(n=64, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32))


def _rel(a, b):
    return float((a - b).abs().max().detach() / b.abs().max().detach())


def test_attaching_changes_nothing_in_eval_mode_and_normalises_in_train_mode():
    module = OnnxModule(tiny_cnn()).eval()
    x = _data()
    before = module(x)[0]
    bn = TrainBatchNorm(module, [[x[:32]], [x[32:]]])
    assert len(bn) == 3                      # conv1, conv2, conv3 (the Gemm is not normalised)
    assert _rel(module(x)[0], before) < 1e-5
    names = {n for n, _ in module.named_parameters()}
    assert sum(".gamma" in n for n in names) == 3 and sum(".beta" in n for n in names) == 3

    seen = {}
    module.set_hook("c2", lambda t: seen.setdefault("c2", t))
    module.train()
    module(_data(16, seed=1) * 3 + 1)         # another distribution: batch stats differ from running ones
    c2 = seen["c2"]
    mean = c2.mean((0, 2, 3))
    std = c2.std((0, 2, 3), unbiased=False)
    norm = bn.norms[bn._keys["c2"]]
    assert torch.allclose(mean, norm.beta.detach(), atol=1e-4)
    assert torch.allclose(std, norm.gamma.detach(), rtol=1e-3, atol=1e-4)


def test_fold_writes_the_eval_mode_normaliser_into_the_conv_exactly():
    module = OnnxModule(tiny_cnn()).eval()
    x = _data()
    bn = TrainBatchNorm(module, [[x]])
    with torch.no_grad():
        for i, norm in enumerate(bn.norms.values()):
            norm.gamma.mul_(1.5 + 0.1 * i)
            norm.beta.add_(0.2)
    bn.recalibrate([[x[:32]], [x[32:]]])
    module.eval()
    expected = module(x)[0]
    bn.fold()
    assert not hasattr(module, "train_norms") and len(bn) == 0
    assert _rel(module(x)[0], expected) < 1e-5
    exported = OnnxModule(module.state_to_onnx()).eval()
    assert _rel(exported(x)[0], expected) < 1e-5


def test_recalibrate_sets_running_statistics_to_the_data_average():
    module = OnnxModule(tiny_cnn()).eval()
    x = _data()
    bn = TrainBatchNorm(module, [[x]])
    norm = bn.norms[bn._keys["c1"]]
    module.train()
    for _ in range(5):
        module(_data(16, seed=2) * 4)        # the EMA drifts towards another distribution
    drifted = norm.rm.clone()
    bn.recalibrate([[x]])
    seen = {}
    module.set_hook("c1", lambda t: seen.setdefault("c1", t))
    with torch.no_grad():
        module.set_normalizer("c1", None)    # raw conv1 output: its statistics are the running ones
        module(x)
    raw = seen["c1"].double()
    assert torch.allclose(norm.rm.double(), raw.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(norm.rv.double(), raw.var((0, 2, 3), unbiased=False), atol=1e-5)
    assert not torch.allclose(drifted, norm.rm, atol=1e-3)


def test_a_dropped_channel_stays_exactly_zero_after_the_normaliser():
    p = prepare(tiny_cnn(), None, multiple=1)
    module = OnnxModule(p.model).eval()
    x = _data()
    TrainBatchNorm(module, [[x]])
    h = np.ones(p.space.size)
    fam = p.space.families[0]
    h[list(fam.gates[:3])] = 0
    Masks(p.space, module, h)
    seen = {}
    hooked = next(t for t, (_, _, idx) in p.space.hooks.items() if (idx == fam.gates[0]).any())
    axis, _, idx = p.space.hooks[hooked]
    module.set_hook(hooked, (lambda prev: (lambda t: seen.setdefault("t", prev(t))))(module._hooks[hooked]))
    module.train()
    module(x)
    dropped = [c for c, g in enumerate(idx) if g in fam.gates[:3]]
    assert dropped
    assert float(seen["t"].detach().select(axis, dropped[0]).abs().max()) == 0.0


def test_the_normaliser_is_the_batch_norm_formula_and_pools_batches_of_any_size():
    from smof_onnx.learn.batchnorm import _Stats

    norm = _Stats(4, 1e-5, 0.1)
    with torch.no_grad():
        norm.gamma.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        norm.beta.copy_(torch.tensor([0.0, 1.0, -1.0, 3.0]))
    y = torch.randn(6, 4, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    var, mean = torch.var_mean(y.double(), [0, 2, 3], unbiased=False)
    expected = ((y.double() - mean.reshape(1, -1, 1, 1)) / torch.sqrt(var + 1e-5).reshape(1, -1, 1, 1)
                * norm.gamma.double().reshape(1, -1, 1, 1) + norm.beta.double().reshape(1, -1, 1, 1))
    assert _rel(norm(y, True).double(), expected) < 1e-5
    norm.mode = "collect"                     # statistics pooled over unequal batches, one of one value
    for part in (y[:5], y[5:], y[5:, :, :1, :1]):
        norm(part, False)
    norm.take_stats()
    pooled = torch.stack([torch.cat([y[:, c].reshape(-1), y[5:, c, :1, :1].reshape(-1)]) for c in range(4)]).double()
    assert torch.allclose(norm.rm.double(), pooled.mean(1), atol=1e-5)
    assert torch.allclose(norm.rv.double(), pooled.var(1, unbiased=False), atol=1e-4)


def test_a_single_value_per_channel_trains_without_error():
    from smof_onnx.learn.batchnorm import _Stats

    norm = _Stats(3, 1e-5, 0.1)
    with torch.no_grad():
        norm.beta.copy_(torch.tensor([0.5, -1.0, 2.0]))
    out = norm(torch.randn(1, 3, 1, 1), True)   # a last batch of one sample on a 1x1 map
    assert torch.equal(out.reshape(-1), norm.beta.detach())   # zero variance: only the shift is left
