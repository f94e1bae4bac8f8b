"""Gates acting on an :class:`~smof_onnx.learn.executor.OnnxModule` (torch).

:class:`Masks` holds the gate vector ``m`` used by the next forward passes: kernel gates are
weight transforms (``w * mask`` over the spatial dims, ring levels nested by products), channel
gates are hooks on the producers' output tensors (``t * m[slot]`` along the channel axis).
``m`` is a leaf tensor with ``requires_grad``, so after ``backward`` its gradient is the
first-order sensitivity of the loss to each gate (the learning stage's importance signal).
The gates live on the module's device; :attr:`Masks.grad` is the gradient on the CPU, averaged
over the ranks under torchrun (:mod:`.distributed`), so every rank scores the gates alike.
"""
from __future__ import annotations

import numpy as np
import torch

from ..selection.gates import GateSpace
from . import distributed

__all__ = ["Masks"]


class Masks:
    def __init__(self, space: GateSpace, module, h: np.ndarray | None = None):
        self.space = space
        self.module = module
        p = next(iter(module.parameters()), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self.m = torch.ones(space.size + 1)  # the extra last entry is the constant 1 of ungated channels
        self.set(np.ones(space.size) if h is None else h)
        self._axis_gates = {w: [(a, space.axes.get((w, a), [])) for a in range(len(shape) - 2)]
                            for w, shape in space.weight_shapes.items()}
        for weight in self._axis_gates:
            module.set_weight_transform(weight, self._transform(weight))
        for tensor, (axis, rank, idx) in space.hooks.items():
            pos = torch.as_tensor(np.where(idx < 0, space.size, idx), dtype=torch.long, device=self.device)
            shape = [1] * rank
            shape[axis] = -1
            module.set_hook(tensor, self._hook(pos, shape))

    def set(self, h: np.ndarray, requires_grad: bool = False) -> None:
        vals = np.concatenate([np.asarray(h, np.float32), [1.0]]).astype(np.float32)
        self.m = torch.from_numpy(vals).to(self.device).requires_grad_(requires_grad)

    @property
    def grad(self) -> np.ndarray | None:
        if self.m.grad is None:
            return None
        g = distributed.all_mean(self.m.grad[:-1].detach().clone())
        return g.cpu().numpy().astype(np.float64)

    def _transform(self, weight: str):
        spatial = self.space.weight_shapes[weight][2:]
        gates = self._axis_gates[weight]

        def fn(w: torch.Tensor) -> torch.Tensor:
            mask = None
            for a, idx in gates:
                if not idx:
                    continue
                entries = [self.m[-1]] * spatial[a]
                e = None
                for i in reversed(idx):
                    e = self.m[i] if e is None else e * self.m[i]
                    lo, hi = self.space.kernel[i].slices
                    entries[lo] = entries[hi] = e
                vec = torch.stack(entries).reshape([-1 if d == a else 1 for d in range(len(spatial))])
                mask = vec if mask is None else mask * vec
            return w if mask is None else w * mask.to(w.dtype)  # the gates are float32; the weight may be fp16 / fp64

        return fn

    def _hook(self, pos: torch.Tensor, shape: list[int]):
        def fn(t: torch.Tensor) -> torch.Tensor:
            return t * self.m[pos].reshape(shape).to(t.dtype)

        return fn

    def remove(self) -> None:
        for weight in self._axis_gates:
            self.module.set_weight_transform(weight, None)
        for tensor in self.space.hooks:
            self.module.set_hook(tensor, None)
