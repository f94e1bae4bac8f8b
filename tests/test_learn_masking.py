"""Masks: the gates act on the weights and tensors in the model's own dtype (the gate vector
itself stays float32, so its gradient is the same signal whatever the model's precision)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper as onh
import pytest

from smof_onnx.selection.select import prepare
from tests.helpers import session
from tests.test_selection_gates import tiny_cnn

torch = pytest.importorskip("torch")


def as_dtype(model: onnx.ModelProto, np_dtype) -> onnx.ModelProto:
    """``model`` with every float initializer, input and output stored as ``np_dtype``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))
    for init in out.graph.initializer:
        init.CopyFrom(onh.from_array(onh.to_array(init).astype(np_dtype), init.name))
    for vi in list(out.graph.input) + list(out.graph.output):
        vi.type.tensor_type.elem_type = elem
    del out.graph.value_info[:]
    onnx.checker.check_model(out, full_check=True)
    return out


@pytest.mark.parametrize("np_dtype", [np.float16, np.float64])
def test_masks_follow_the_weight_dtype(np_dtype):
    from smof_onnx.learn.executor import OnnxModule
    from smof_onnx.learn.masking import Masks

    p = prepare(as_dtype(tiny_cnn(), np_dtype), None, multiple=1)
    h = np.ones(p.space.size)
    h[[g.index for g in p.space.kernel if g.node == "conv3"][:1]] = 0  # conv3's outer ring: 5x5 -> 3x3
    h[list(p.space.families[1].gates)[:4]] = 0                          # four channels of conv3
    module = OnnxModule(p.model)
    masks = Masks(p.space, module, h)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np_dtype)
    with torch.no_grad():
        out = module(torch.from_numpy(x))[0]  # raised "expected scalar type Half but found Float"
    assert out.dtype == torch.from_numpy(x).dtype
    ref = prepare(tiny_cnn(), None, multiple=1)  # the float32 model (ORT has no float64 Conv), same gates
    assert ref.space.size == p.space.size
    want = session(ref.space.apply(ref.model, h)).run(None, {"x": x.astype(np.float32)})[0]
    tol = 1e-2 if np_dtype == np.float16 else 1e-5
    assert np.abs(out.numpy().astype(np.float64) - want).max() <= tol * np.abs(want).max()

    masks.set(np.ones(p.space.size), requires_grad=True)
    (module(torch.from_numpy(x))[0].float() ** 2).sum().backward()
    grad = masks.grad
    assert masks.m.dtype == torch.float32 and grad.shape == (p.space.size,)
    assert np.all(np.isfinite(grad)) and np.all(grad[[g.index for g in p.space.kernel]] != 0)
    masks.remove()
