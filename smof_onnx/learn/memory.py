"""The learning stage's memory budget (``--max-memory``) and the batch size it allows.

Budget: ``--max-memory`` (bytes, or a size such as ``"4G"``, ``"512M"``, ``"1.5GiB"``); by
default :data:`DEFAULT_FRACTION` of the memory available when the stage starts
(:func:`available_memory`: the smaller of ``MemAvailable`` in ``/proc/meminfo`` (psutil where
installed, ``os.sysconf`` elsewhere) and what the cgroup's ``memory.max`` still leaves). The
budget bounds the process's resident memory (RSS) while it learns.

Estimate, before any training (:func:`plan`): a step's peak is

    RSS now + WEIGHT_FACTOR x weight bytes + samples per step x ACTIVATION_FACTOR x A

- ``A``: the bytes of every tensor a node makes in one forward pass of one sample at the
  calibration input size (ONNX shape inference on the graph the trainer runs);
- samples per step: the batch, twice the batch when batches are extended by mixes
  (:func:`smof_onnx.learn.batches.make_batch`);
- ``ACTIVATION_FACTOR``: the student's activations kept for the backward pass, their gradients
  while it runs, the teacher's forward on the same batch and the allocator's slack, per byte of
  ``A``; measured by ``bench/memory_factor.py`` (peak RSS of search steps at two batch sizes,
  the difference per sample over ``A``): see :data:`ACTIVATION_FACTOR`;
- ``WEIGHT_FACTOR``: student and teacher weights, gradients and Adam's two moments.

The batch is the largest one (at most ``--batch-size``) whose estimate fits; a lower batch is
reported (``settings.memory``: budget, estimate per sample, batch size, reason). When not even a
batch of 1 fits, :class:`UsageError` names ``--max-memory`` and the estimate (exit 2).

While training (:class:`MemoryGuard`), the RSS is read after every step; above the budget each
batch is split into micro-batches whose gradients add up (the same steps and schedule, half the
activations at a time), again while it stays above; when single samples are still over the
budget the stage stops with :class:`UsageError`. This module imports no torch.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from ..errors import UsageError

__all__ = ["DEFAULT_FRACTION", "ACTIVATION_FACTOR", "WEIGHT_FACTOR", "parse_memory", "available_memory",
           "activation_bytes", "weight_bytes", "current_rss", "MemoryPlan", "plan", "MemoryGuard",
           "format_bytes"]

DEFAULT_FRACTION = 0.5  # of the available memory, when --max-memory is not given
# Peak bytes per sample of a training step over the bytes of one sample's forward activations
# (``A``). Measured with bench/memory_factor.py (1 search + 1 fine-tune epoch, mixing on, peak RSS
# at batch 8 and 32): 2.32 on a 256x256 dense conv net, 2.49 on ResNet-20 (Fashion-MNIST).
# 4 leaves room for what the RSS holds besides the activations (conv workspaces, allocator slack).
ACTIVATION_FACTOR = 4.0
WEIGHT_FACTOR = 6.0  # student + teacher weights, gradients, Adam's two moments, one spare copy

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_DTYPE_BYTES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.FLOAT16: 2,
                onnx.TensorProto.BFLOAT16: 2, onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4,
                onnx.TensorProto.INT16: 2, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
                onnx.TensorProto.BOOL: 1}


def parse_memory(value: Any) -> int:
    """Bytes from ``value``: a positive number of bytes or a size such as ``"4G"``, ``"512M"``,
    ``"1.5GiB"`` (K, M, G, T are powers of 1024). Raises :class:`UsageError` naming ``--max-memory``."""
    if isinstance(value, bool):
        raise UsageError(f"--max-memory {value!r}: give bytes or a size such as 4G or 512M")
    if isinstance(value, (int, float, np.integer, np.floating)):
        n = float(value)
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise UsageError(f"--max-memory {value!r}: give bytes or a size such as 4G or 512M")
        n = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if not (math.isfinite(n) and n >= 1):
        raise UsageError(f"--max-memory {value!r}: must be a positive size such as 4G or 512M")
    return int(n)


def format_bytes(n: float) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}iB"
    return f"{int(n)} B"


def _meminfo_available() -> int | None:
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_left() -> int | None:
    """What the cgroup (v2) memory limit still leaves this process's group, None without one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes this process may still take (see the module docstring), None when unknown."""
    known = [v for v in (_meminfo_available(), _cgroup_left()) if v is not None]
    return min(known) if known else None


def current_rss() -> int:
    """This process's resident memory now, in bytes (0 when it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return 0


def activation_bytes(model: onnx.ModelProto, sample_shapes: Mapping[str, Sequence[int]]) -> int:
    """Bytes of every tensor a node of ``model`` makes in one forward pass of one sample, the graph
    inputs fixed to batch 1 and ``sample_shapes`` (per input, without the batch axis). A tensor whose
    shape inference cannot tell counts as the largest known one (a conservative guess)."""
    from smof_onnx.passes import graph as pgraph

    shapes = {name: [1, *[int(d) for d in dims]] for name, dims in sample_shapes.items()}
    try:
        inferred = pgraph.infer_graph_shapes(pgraph.to_graph(model), shapes)
    except Exception:  # noqa: BLE001 - best effort; unknown tensors get the conservative guess below
        inferred = None
    known: dict[str, int] = {}
    for vi in [] if inferred is None else list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if tt.HasField("shape") and all(d >= 0 for d in dims):
            known[vi.name] = int(np.prod(dims, dtype=np.int64)) * _DTYPE_BYTES.get(tt.elem_type, 4)
    largest = max(known.values(), default=4 * int(sum(np.prod(s) for s in shapes.values())))
    outputs = [o for node in model.graph.node for o in node.output if o]
    return int(sum(known.get(o, largest) for o in outputs))


def weight_bytes(model: onnx.ModelProto) -> int:
    return int(sum(int(np.prod(i.dims, dtype=np.int64)) * _DTYPE_BYTES.get(i.data_type, 4)
                   for i in model.graph.initializer))


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """The batch the budget allows and why (the report's ``settings.memory``)."""

    budget: int
    budget_source: str          # "--max-memory" or "50% of available memory"
    base: int                   # RSS when planned + weights, gradients, optimiser state
    per_sample: int             # estimated peak bytes per sample of a step
    samples_per_batch_entry: int  # 2 when batches are extended by mixes
    requested_batch: int
    batch_size: int
    reason: str = ""

    def report(self) -> dict:
        out = {"budget": self.budget, "budget_source": self.budget_source, "base": self.base,
               "estimated_per_sample": self.per_sample, "requested_batch_size": self.requested_batch,
               "batch_size": self.batch_size,
               "estimated_peak": self.base + self.batch_size * self.samples_per_batch_entry * self.per_sample}
        if self.reason:
            out["reason"] = self.reason
        return out


def budget(max_memory: Any = None, available: int | None = None, rss: int | None = None) -> tuple[int, str] | None:
    """(bytes, source) of the memory budget: ``max_memory`` (``--max-memory``), else
    :data:`DEFAULT_FRACTION` of what is available plus what this process holds (``rss``);
    None when the available memory cannot be read."""
    if max_memory is not None:
        return parse_memory(max_memory), "--max-memory"
    avail = available_memory() if available is None else available
    if avail is None:
        return None
    rss_now = current_rss() if rss is None else rss
    return int(DEFAULT_FRACTION * (avail + rss_now)), f"{DEFAULT_FRACTION:.0%} of available memory"


def plan(model: onnx.ModelProto, sample_shapes: Mapping[str, Sequence[int]], requested_batch: int, *,
         max_memory: Any = None, mix: bool = True, fixed_batch: bool = False, rss: int | None = None,
         available: int | None = None, device: Any = None) -> MemoryPlan:
    """The largest batch of at most ``requested_batch`` whose estimated peak fits the budget
    (module docstring); ``fixed_batch``: the model runs only its own batch, which is kept (and
    must fit). Raises :class:`UsageError` when even one sample does not fit. On a CUDA ``device``
    the budget and the use are the GPU's (free memory from ``torch.cuda.mem_get_info``, the
    memory PyTorch has allocated there instead of the RSS)."""
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        used = int(torch.cuda.memory_allocated(device))
        available = free if available is None else available
        rss = used if rss is None else rss
    found = budget(max_memory, available, rss)
    if found is None:
        return MemoryPlan(0, "unknown (no memory information)", 0, 0, 1 + bool(mix), requested_batch,
                          requested_batch, "the available memory could not be read: batch not bounded")
    limit, source = found
    rss_now = current_rss() if rss is None else rss
    per_sample = int(ACTIVATION_FACTOR * activation_bytes(model, sample_shapes))
    base = rss_now + int(WEIGHT_FACTOR * weight_bytes(model))
    entries = 2 if mix else 1
    room = limit - base
    fits = max(0, room // max(1, per_sample * entries))
    need = (f"the learning stage needs about {format_bytes(base)} before any batch (process memory now and "
            f"the weights with their gradients and optimiser state) plus {format_bytes(per_sample * entries)} "
            f"per batch sample (activations of {format_bytes(per_sample // int(ACTIVATION_FACTOR) or 1)} per "
            f"forward pass of one sample, x{ACTIVATION_FACTOR:g} for training"
            + (", twice for the mixed copies" if mix else "") + ")")
    if fixed_batch:
        if fits < requested_batch:
            raise UsageError(f"--max-memory {format_bytes(limit)} ({source}) is too small: the model runs only "
                             f"its own batch of {requested_batch}, and {need}; give a larger --max-memory, or "
                             "export the model with a free batch axis")
        return MemoryPlan(limit, source, base, per_sample, entries, requested_batch, requested_batch)
    if fits < 1:
        raise UsageError(f"--max-memory {format_bytes(limit)} ({source}) is too small for even one sample: "
                         f"{need}; give a larger --max-memory, a smaller --input-shape / smaller images, "
                         "or free memory")
    if fits >= requested_batch:
        return MemoryPlan(limit, source, base, per_sample, entries, requested_batch, requested_batch)
    return MemoryPlan(limit, source, base, per_sample, entries, requested_batch, int(fits),
                      f"--batch-size {requested_batch} lowered to {int(fits)} to stay within "
                      f"{format_bytes(limit)} ({source}): {need}")


class MemoryGuard:
    """Reads the RSS after each training step (:meth:`check`); above the budget it doubles
    :attr:`split` (each batch runs as that many micro-batches, gradients added up). ``budget``
    0 or None: never splits."""

    def __init__(self, budget: int | None, rss=current_rss, device: Any = None):
        if device is not None and getattr(device, "type", "cpu") == "cuda":
            import torch

            rss = lambda: int(torch.cuda.memory_reserved(device))  # noqa: E731 - the GPU's, not the host's
        self.budget = int(budget or 0)
        self.split = 1
        self.peak = 0
        self.events: list[dict] = []
        self._rss = rss

    def check(self, batch: int, step: int) -> None:
        rss = self._rss()
        self.peak = max(self.peak, rss)
        if not self.budget or rss <= self.budget:
            return
        if self.split >= batch:
            raise UsageError(f"--max-memory {format_bytes(self.budget)}: the learning stage uses "
                             f"{format_bytes(rss)} at step {step} even one sample at a time; give a larger "
                             "--max-memory, smaller inputs, or free memory")
        self.split = min(batch, self.split * 2)
        self.events.append({"step": step, "rss": rss, "micro_batches": self.split})

    def report(self) -> dict:
        out: dict[str, Any] = {"peak_rss": self.peak}
        if self.events:
            out["micro_batches"] = self.split
            out["splits"] = self.events
        return out
