"""How the learning stage runs: its settings, the epoch defaults, thread count and progress bars."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys

import torch

from ..batching import Batching
from ..selection.defaults import FEATURE_DISTILL

__all__ = ["TrainSettings", "batched", "make_settings", "torch_threads", "Progress", "FEATURE_WEIGHT"]

FEATURE_WEIGHT = FEATURE_DISTILL  # default weight of the stage-output distillation (:mod:`.losses`)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    search_epochs: int
    finetune_epochs: int
    lr: float
    batch_size: int
    seed: int
    progress: bool = True
    prior_batches: int = 8
    reselect_every: int = 4
    ema: float = 0.9
    ramp: float = 0.4
    mix: bool = True
    channel_cost: float = 1.0
    temperature: float = 1.0
    batchnorm: bool = True
    feature_weight: float = 0.0
    whole_batches: bool = False
    runtime: object = None  # :class:`.device.Runtime` (None: the CPU, no autocast)
    calibrate_rings: bool = True  # :mod:`.ring_calibration` (False: the raw importances, for benches)


def batched(settings: TrainSettings, batching: Batching) -> TrainSettings:
    """``settings`` for a model whose batch :func:`smof_onnx.batching.free_batch` could not
    free: its own batch size, every batch whole, no mixing (a mixed batch is twice as long)."""
    if batching.free:
        return settings
    return dataclasses.replace(settings, batch_size=batching.fixed, mix=False, whole_batches=True)


def make_settings(config, n_samples: int, default_lr: float = 1e-3, target_steps: int = 300,
                  finetune_steps: int = 600) -> TrainSettings:
    """Epoch defaults: enough passes for about ``target_steps`` optimiser steps of search and
    ``finetune_steps`` of fine-tune (measured on the default model at 0.5 FLOPs from 4096
    images: 640 fine-tune steps 91.78%, 320 steps 91.70%)."""
    per_epoch = max(1, math.ceil(n_samples / config.batch_size))
    auto = max(1, math.ceil(target_steps / per_epoch))
    auto_ft = max(1, math.ceil(finetune_steps / per_epoch))
    return TrainSettings(search_epochs=auto if config.epochs is None else config.epochs,
                         finetune_epochs=auto_ft if config.finetune_epochs is None else config.finetune_epochs,
                         lr=config.lr or default_lr, batch_size=config.batch_size, seed=config.seed,
                         progress=config.progress_bars,
                         feature_weight=FEATURE_WEIGHT if config.feature_distill is None else config.feature_distill)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """PyTorch's intra-op thread count set to ``n`` inside the block (None: unchanged)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Progress:
    """tqdm when asked for (stderr), else nothing."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled and total > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=True, dynamic_ncols=True)

    def update(self, **post) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in post.items()},
                                 refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
