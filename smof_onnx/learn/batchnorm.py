"""Batch normalisation while training, on a graph whose BatchNormalization was folded away.

The learning stage runs the *canonical* graph, in which every Conv + BatchNormalization pair is
one Conv (:mod:`smof_onnx.passes.fuse_batchnorm`). Training those folded weights directly loses what BN
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

Under torchrun (:mod:`.distributed`) the batch statistics are those of the global batch (each
rank's sum and sum of squares all-reduced, with gradient, as ``SyncBatchNorm`` does), and the
running statistics are collected over the ranks' share of the batches and pooled over all of
them, so every rank holds the statistics a plain run computes.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from . import distributed

__all__ = ["TrainBatchNorm"]


class _Stats(nn.Module):
    def __init__(self, channels: int, eps: float, momentum: float):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("rm", torch.zeros(channels))
        self.register_buffer("rv", torch.ones(channels))
        self.mode = "normalise"           # or "collect": accumulate statistics, pass y through
        self.parts: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # per batch: mean, var, count

    def forward(self, y: torch.Tensor, training: bool) -> torch.Tensor:
        # The fused kernel F.batch_norm: forward + backward about 3x faster than var_mean and
        # elementwise ops at 28x28 (ResNet-20 steps 20% faster). It wants the statistics in the
        # input's dtype, keeps the unbiased variance as running variance, and refuses a single
        # value per channel (a last batch of one sample on a 1x1 map), which var_mean handles.
        n = y.numel() // max(1, y.shape[1])
        if self.mode == "collect":
            with torch.no_grad():
                if n > 1:
                    mean, var = torch.zeros_like(self.rm), torch.ones_like(self.rv)
                    out = F.batch_norm(y.to(self.rm.dtype), mean, var, self.gamma, self.beta, True, 1.0, self.eps)
                    var = var * ((n - 1) / n)
                else:
                    var, mean = torch.var_mean(y, self._dims(y), unbiased=False)
                    out = self._normalise(y, var, mean)
                if n > 0:
                    self.parts.append((mean.double(), var.double(), n))
            return out.to(y.dtype) if training else y
        if training and distributed.current().active:
            return self._synced(y)
        if training and n < 2:
            return self._normalise(y, *torch.var_mean(y, self._dims(y), unbiased=False))
        out = F.batch_norm(y.to(self.rm.dtype), self.rm, self.rv, self.gamma, self.beta, training, self.momentum,
                           self.eps)
        return out.to(y.dtype)

    def _synced(self, y: torch.Tensor) -> torch.Tensor:
        """Train mode over the global batch: sums all-reduced with their gradient."""
        from torch.distributed.nn.functional import all_reduce

        x = y.to(self.rm.dtype)
        dims = self._dims(x)
        count = torch.tensor([float(x.numel() // max(1, x.shape[1]))], device=x.device)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.rm.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
            self.rv.mul_(1 - self.momentum).add_(self.momentum * var.detach() * (n / (n - 1).clamp_min(1)))
        return self._normalise(x, var, mean).to(y.dtype)

    @staticmethod
    def _dims(y: torch.Tensor) -> list[int]:
        return [d for d in range(y.ndim) if d != 1]

    def _normalise(self, y, var, mean):
        shape = [1, -1] + [1] * (y.ndim - 2)
        scale = self.gamma / torch.sqrt(var + self.eps)
        return (y - mean.reshape(shape)) * scale.reshape(shape) + self.beta.reshape(shape)

    def take_stats(self) -> None:
        """Running statistics := the pooled mean and (biased) variance of the collected batches,
        combined in float64 (over every rank's batches under torchrun: a collective call)."""
        world = distributed.current()
        if world.active:
            c = self.rm.numel()
            sums = torch.zeros(2 * c + 1, dtype=torch.float64, device=self.rm.device)
            for m, v, n in self.parts:
                sums += torch.cat([n * m, n * (v + m * m), torch.tensor([float(n)], dtype=torch.float64,
                                                                        device=m.device)])
            import torch.distributed as dist

            dist.all_reduce(sums)
            self.parts = []
            if sums[-1] <= 0:
                return
            mean = sums[:c] / sums[-1]
            var = (sums[c:2 * c] / sums[-1] - mean * mean).clamp_min(0)
            self.rm.copy_(mean.to(self.rm.dtype))
            self.rv.copy_(var.to(self.rv.dtype))
            return
        if not self.parts:
            return
        counts = torch.tensor([n for _, _, n in self.parts], dtype=torch.float64).reshape(-1, 1)
        means = torch.stack([m for m, _, _ in self.parts]).cpu()
        variances = torch.stack([v for _, v, _ in self.parts]).cpu()
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        var = (counts * (variances + (means - mean) ** 2)).sum(0) / total
        self.rm.copy_(mean.to(self.rm.dtype))
        self.rv.copy_(var.to(self.rv.dtype))
        self.parts = []


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
        first = next(iter(module.parameters()), None)
        if first is not None:
            self.norms.to(first.device)
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

    @torch.no_grad()
    def dead_channel_masks(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(``beta``, keep mask) per normaliser: 0 where the conv's output channel is dead (its
        filter and bias exactly 0). Such a channel is 0 before the normaliser and ``beta`` after
        it, so ``beta`` must stay 0 for the channel to stay dead (and be cut)."""
        out = []
        for tensor, (weight, bias) in self.convs.items():
            w, b = self.module.parameter(weight), self.module.parameter(bias)
            dead = (w.reshape(w.shape[0], -1) == 0).all(1) & (b == 0)
            beta = self.norms[self._keys[tensor]].beta
            out.append((beta, (~dead).to(beta.dtype)))
        return out

    def _normaliser(self, norm: _Stats):
        return lambda y: norm(y, self.module.training)

    @torch.no_grad()
    def _collect(self, batches: Iterable[Sequence[torch.Tensor]], training: bool) -> None:
        was = self.module.training
        self.module.train(training)
        for norm in self.norms.values():
            norm.mode, norm.parts = "collect", []
        try:
            seen = False
            for feeds in batches:
                self.module(*feeds)
                seen = True
            if seen or distributed.current().active:  # under torchrun every rank pools (a collective)
                for norm in self.norms.values():
                    norm.take_stats()
        finally:
            for norm in self.norms.values():
                norm.mode, norm.parts = "normalise", []
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
            s = norm.gamma.double() / torch.sqrt(norm.rv.double() + norm.eps)
            w.copy_((w.double() * s.reshape([-1] + [1] * (w.ndim - 1))).to(w.dtype))
            b.copy_(((b.double() - norm.rm.double()) * s + norm.beta.double()).to(b.dtype))
            self.module.set_normalizer(tensor, None)
        del self.module.train_norms
        self.norms = nn.ModuleDict()
        self.convs.clear()
