"""Batch normalisation while training, on a graph whose BatchNormalization was folded away.

The learning stage runs the *canonical* graph, in which every Conv + BatchNormalization pair is
one Conv (:mod:`passes.fuse_batchnorm`). Training those folded weights directly loses what BN
gives optimisation: each step sees activations normalised by the batch, so a dropped ring or
channel upstream is compensated at once instead of by slow weight drift. Measured on the
default model (see :data:`smof_onnx.learn.train.TrainSettings.batchnorm`). Peers fine-tune with
BN in train mode, so smof does too.

For every Conv whose weight W and bias b are trainable parameters (output y, channel c)::

    train:  z_c = gamma_c * (y_c - mean_B(y_c)) / sqrt(var_B(y_c) + eps) + beta_c
    eval:   z_c = gamma_c * (y_c - rm_c) / sqrt(rv_c + eps) + beta_c

(statistics over every axis but the channel axis 1). ``rm``/``rv`` start as the mean/variance of
y over the calibration batches and ``gamma = sqrt(rv + eps)``, ``beta = rm``, so in eval mode the
module computes exactly what it computed before :class:`TrainBatchNorm` was attached. During
training the running statistics follow the batches (EMA, ``momentum``); :meth:`recalibrate`
recomputes them as a plain average over given batches with the final weights.

:meth:`fold` writes the eval-mode normaliser back into the conv (the same maths as folding BN)::

    s = gamma / sqrt(rv + eps);   W' = W * s (per output channel);   b' = (b - rm) * s + beta

and removes the normalisers; afterwards the module (and ``state_to_onnx``) is a plain copy of
the graph again. The normaliser runs before the node output's hook, so a channel gate multiplies
the normalised output and a dropped channel is exactly 0 (its filter and bias are zeroed later).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

__all__ = ["TrainBatchNorm"]


class _Stats(nn.Module):
    def __init__(self, channels: int, eps: float, momentum: float):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("rm", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("rv", torch.ones(channels, dtype=torch.float64))
        self.mode = "normalise"           # or "collect": accumulate statistics, pass y through
        self.acc: torch.Tensor | None = None  # rows: sum, sum of squares, count (per channel)

    def _dims(self, y: torch.Tensor) -> list[int]:
        return [d for d in range(y.ndim) if d != 1]

    def _shape(self, y: torch.Tensor) -> list[int]:
        return [1, -1] + [1] * (y.ndim - 2)

    def forward(self, y: torch.Tensor, training: bool) -> torch.Tensor:
        dims, shape = self._dims(y), self._shape(y)
        if self.mode == "collect":
            with torch.no_grad():
                yd = y.detach().double()
                n = y.numel() // y.shape[1]
                part = torch.stack([yd.sum(dims), (yd * yd).sum(dims), yd.new_full((y.shape[1],), n)])
                self.acc = part if self.acc is None else self.acc + part
            if training:
                return self._normalise(y, *torch.var_mean(y, dims, unbiased=False), shape)
            return y
        if training:
            var, mean = torch.var_mean(y, dims, unbiased=False)
            with torch.no_grad():
                self.rm.mul_(1 - self.momentum).add_(self.momentum * mean.detach().double())
                self.rv.mul_(1 - self.momentum).add_(self.momentum * var.detach().double())
            return self._normalise(y, var, mean, shape)
        return self._normalise(y, self.rv.to(y.dtype), self.rm.to(y.dtype), shape)

    def _normalise(self, y, var, mean, shape):
        scale = self.gamma / torch.sqrt(var + self.eps)
        return (y - mean.reshape(shape)) * scale.reshape(shape) + self.beta.reshape(shape)

    def take_stats(self) -> None:
        total, sq, n = self.acc
        mean = total / n
        self.rm.copy_(mean)
        self.rv.copy_((sq / n - mean * mean).clamp_min(0))
        self.acc = None


class TrainBatchNorm:
    """Train-mode batch normalisation after every trainable Conv of an :class:`OnnxModule`.

    ``batches``: feed lists (one tensor per model input) whose statistics initialise the
    normalisers. The normalisers follow ``module.training``; while attached they are the
    submodule ``train_norms`` of ``module``, so ``module.parameters()`` includes their
    ``gamma`` / ``beta`` (``named_onnx_parameters`` does not)."""

    def __init__(self, module, batches: Iterable[Sequence[torch.Tensor]], *, eps: float = 1e-5,
                 momentum: float = 0.1):
        self.module = module
        self.convs: dict[str, tuple[str, str]] = {}   # output tensor -> (weight, bias)
        params = set(module.parameter_names)
        for _, ctx, ins, outs in module._steps:
            if (ctx.op_type == "Conv" and len(ins) > 2 and ins[1] in params and ins[2] in params and outs[0]
                    and outs[0] not in module.output_names):
                self.convs[outs[0]] = (ins[1], ins[2])
        self.norms = nn.ModuleDict()
        self._keys: dict[str, str] = {}
        for i, (tensor, (weight, _)) in enumerate(self.convs.items()):
            key = f"bn{i}"
            self._keys[tensor] = key
            self.norms[key] = _Stats(int(module.parameter(weight).shape[0]), eps, momentum)
        module.train_norms = self.norms
        for tensor, key in self._keys.items():
            module.set_normalizer(tensor, self._normaliser(self.norms[key]))
        self._collect(batches, training=False)
        with torch.no_grad():
            for norm in self.norms.values():
                norm.gamma.copy_(torch.sqrt(norm.rv + norm.eps).float())
                norm.beta.copy_(norm.rm.float())

    def __len__(self) -> int:
        return len(self.norms)

    def _normaliser(self, norm: _Stats):
        return lambda y: norm(y, self.module.training)

    @torch.no_grad()
    def _collect(self, batches: Iterable[Sequence[torch.Tensor]], training: bool) -> None:
        was = self.module.training
        self.module.train(training)
        for norm in self.norms.values():
            norm.mode, norm.acc = "collect", None
        try:
            seen = False
            for feeds in batches:
                self.module(*feeds)
                seen = True
            if seen:
                for norm in self.norms.values():
                    norm.take_stats()
        finally:
            for norm in self.norms.values():
                norm.mode, norm.acc = "normalise", None
            self.module.train(was)

    def recalibrate(self, batches: Iterable[Sequence[torch.Tensor]]) -> None:
        """Running statistics := the plain average over ``batches`` (upstream layers normalise
        with batch statistics while they are collected, as during training)."""
        self._collect(batches, training=True)

    @torch.no_grad()
    def fold(self) -> None:
        """Write the eval-mode normalisers into the convs' weights and biases and detach them."""
        for tensor, (weight, bias) in self.convs.items():
            norm = self.norms[self._keys[tensor]]
            w, b = self.module.parameter(weight), self.module.parameter(bias)
            s = norm.gamma.double() / torch.sqrt(norm.rv + norm.eps)
            w.copy_((w.double() * s.reshape([-1] + [1] * (w.ndim - 1))).to(w.dtype))
            b.copy_(((b.double() - norm.rm) * s + norm.beta.double()).to(b.dtype))
            self.module.set_normalizer(tensor, None)
        del self.module.train_norms
        self.norms = nn.ModuleDict()
        self.convs.clear()
