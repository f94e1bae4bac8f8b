"""Where the learning stage runs: ``--device auto|cpu|cuda|cuda:N`` and ``--amp``.

Rules:
- :func:`parse_device` (no torch) checks the spelling: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``;
  anything else is a :class:`UsageError` (exit 2).
- :func:`resolve` (torch) picks the device: ``auto`` (or None) is ``cuda`` when
  ``torch.cuda.is_available()``, else ``cpu``; ``cuda`` / ``cuda:N`` without CUDA, or N beyond
  ``torch.cuda.device_count()``, is a :class:`UsageError` before any work. Under ``torchrun``
  with CUDA, ``cuda`` means ``cuda:LOCAL_RANK`` (one GPU per process).
- ``--amp``: autocast on CUDA (bfloat16 when ``torch.cuda.is_bf16_supported()``, else float16
  with a ``GradScaler``); parameters, optimiser state, losses and gate importances stay float32.
  On CPU ``--amp`` is a :class:`UsageError` (CPU autocast would slow most convolutions here and
  change the numbers for nothing); leave it out.
- Everything PyTorch does in the learning stage runs on the device: the teacher and student
  modules, the gates (:class:`.masking.Masks`), the train-mode BN, the search, the fine-tune
  and the quality's forward passes. Batches are read on the CPU (DataLoader workers) and moved
  with ``non_blocking`` copies; the ONNX Runtime work (the cut, the gate, qr's features, the
  latency tables) stays on the CPU execution provider.

Determinism: on CPU a seed gives the same bytes run after run (the tests check it). On CUDA,
the seeded parts are the same (batch order, mixing weights, the random projection: all drawn
on the CPU), but cuDNN's convolution algorithms and atomics-based reductions are not
bit-reproducible, so two GPU runs agree to float rounding, not bit for bit, and a GPU run is
not bit-identical to a CPU run (the gates it selects usually are the same; ties may flip).
AMP changes the numbers further (bf16 has 8 bits of mantissa). None of the CUDA paths were run
in the task that wrote them (no GPU was available): ``bench/gpu_check.sh`` exercises them.
"""
from __future__ import annotations

import contextlib
import os
import re

from ..errors import UsageError

__all__ = ["parse_device", "resolve", "Runtime"]

_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def parse_device(spec: str | None) -> str:
    """The device spelling, lower-cased (None -> ``auto``); :class:`UsageError` when malformed."""
    value = "auto" if spec is None else str(spec).strip().lower()
    if not _SPEC.match(value):
        raise UsageError(f"--device {spec}: must be auto, cpu, cuda or cuda:N (e.g. cuda:0)")
    return value


class Runtime:
    """The resolved device and the mixed precision of one learning stage."""

    def __init__(self, device, amp_dtype=None):
        import torch

        self.device = torch.device(device)
        self.amp_dtype = amp_dtype

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """Autocast for the forward passes (a no-op without ``--amp``)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def scaler(self):
        """A GradScaler for float16 autocast, else None (bfloat16 and float32 need none)."""
        import torch

        if self.amp_dtype is torch.float16:
            return torch.amp.GradScaler("cuda")
        return None

    def report(self) -> dict:
        return {"device": str(self.device), "amp": None if self.amp_dtype is None else str(self.amp_dtype).split(".")[-1]}


def resolve(spec: str | None, amp: bool = False) -> Runtime:
    """The :class:`Runtime` for ``--device spec`` and ``--amp`` (module docstring)."""
    import torch

    value = parse_device(spec)
    available = torch.cuda.is_available()
    if value == "auto":
        value = "cuda" if available else "cpu"
    if value.startswith("cuda"):
        if not available:
            raise UsageError(f"--device {spec}: PyTorch sees no CUDA device here (torch {torch.__version__}, "
                             f"built {'with' if torch.version.cuda else 'without'} CUDA); use --device cpu, or "
                             "install a CUDA build of PyTorch on a machine with a GPU")
        if value == "cuda" and "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            value = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: there are {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if amp and not value.startswith("cuda"):
        raise UsageError("--amp runs on CUDA only (autocast to bfloat16 / float16); the device here is the CPU: "
                         "leave --amp out, or give --device cuda on a machine with a GPU")
    amp_dtype = None
    if amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Runtime(value, amp_dtype)
