"""Data-parallel learning under ``torchrun``: one process per rank, torch.distributed underneath.

``torchrun --nproc-per-node N -m smof_onnx compress ...`` (or ``--nnodes M`` across machines)
starts N processes with ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set; :func:`setup` joins the
process group (``gloo`` on CPU, ``nccl`` on CUDA). Rules:
- ``--batch-size`` is the *global* batch: every rank takes ``batch / world_size`` of it, a
  multiple the batch must be (:class:`UsageError` otherwise). The batches come from
  ``torch.utils.data.DistributedSampler`` (shuffled, seeded, ``set_epoch`` per epoch), in a plain
  run too (``num_replicas=1``): rank r reads positions r, r + W, ... of one permutation, so the
  ranks' batches together are exactly the plain run's batch at that step.
- Gradients of the weights: ``DistributedDataParallel`` (averaged). Each rank's loss is a mean
  over its rows, and the ranks hold equal shares, so the average is the plain run's loss.
- What is not a weight and must be equal on every rank is all-reduced here: the gates'
  gradients (so every rank computes the same importances and selects the same gates), the
  train-mode BN's batch statistics (:mod:`.batchnorm`, like ``SyncBatchNorm``) and its running
  statistics when they are collected, and the teacher-side normalisers of the losses
  (:func:`global_mean`). Batch mixing draws its partners from the whole global batch
  (:func:`gather_rows`), with the same seeded generator on every rank.
- A model that takes only its own fixed batch trains in one process (refused under torchrun).
- After the learning stage every rank meets at a barrier and the group is closed; rank 0 alone
  then cuts, verifies and writes; the others return and exit 0 (:func:`is_worker`).
- The report's ``method.distributed``: ``{"world_size", "backend"}`` (``1`` / ``"none"`` for a
  plain run).
Nothing here is a home-made gradient exchange or process pool: DDP, the sampler and the
collectives are torch's.
"""
from __future__ import annotations

import dataclasses
import os

__all__ = ["World", "world_from_env", "is_worker", "setup", "finish", "last", "current", "all_mean", "global_mean", "gather_rows", "broadcast_object",
           "wrap"]


@dataclasses.dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    backend: str = "none"

    @property
    def active(self) -> bool:
        return self.size > 1

    def report(self) -> dict:
        return {"world_size": self.size, "backend": self.backend}


def world_from_env() -> tuple[int, int]:
    """(world size, rank) from torchrun's environment ((1, 0) outside it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        return 1, 0


def is_worker() -> bool:
    """True in a torchrun rank other than 0 (it trains its shard; rank 0 writes)."""
    size, rank = world_from_env()
    return size > 1 and rank != 0


_WORLD = World()


def current() -> World:
    return _WORLD


def setup(device) -> World:
    """Join the process group when started by torchrun (``gloo`` on CPU, ``nccl`` on CUDA)."""
    global _WORLD
    size, rank = world_from_env()
    if size <= 1:
        _WORLD = World()
        return _WORLD
    import torch.distributed as dist

    backend = "nccl" if getattr(device, "type", str(device)).startswith("cuda") else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            dist.init_process_group(backend, device_id=device)
        else:
            dist.init_process_group(backend)
    _WORLD = World(dist.get_world_size(), dist.get_rank(), dist.get_backend())
    return _WORLD


_LAST = World()


def last() -> World:
    """The world of the last learning stage of this process (what the report records)."""
    return _LAST


def finish() -> None:
    """Every rank at a barrier, then the group closed (no-op in a plain run)."""
    global _WORLD, _LAST
    _LAST = _WORLD
    if not _WORLD.active:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _WORLD = World()


def all_mean(t):
    """``t`` averaged over the ranks (in place; returned)."""
    if _WORLD.active:
        import torch.distributed as dist

        dist.all_reduce(t)
        t /= _WORLD.size
    return t


def global_mean(t):
    """``t.mean()`` over the rows of every rank (equal shares), without gradient: the loss
    normalisers computed from the teacher's outputs."""
    m = t.detach().float().mean()
    return all_mean(m.clone()) if _WORLD.active else m


def gather_rows(t):
    """The global batch from each rank's rows, in the plain run's order: rank r holds positions
    r, r + W, ... (:mod:`DistributedSampler` interleaving); equal shares on every rank."""
    if not _WORLD.active:
        return t
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(_WORLD.size)]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts, 1).reshape(-1, *t.shape[1:])


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (picklable; itself in a plain run): what one process
    measured (latency tables, timed selections) decides for all."""
    if not _WORLD.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(module):
    """``module`` in DistributedDataParallel when the group is active (else itself); built once
    per module, after its train-mode BN is attached (its parameters are DDP's)."""
    if not _WORLD.active:
        return module
    cached = module.__dict__.get("_smof_ddp")
    if cached is not None:  # one DDP per module: a second would add a second set of gradient hooks
        return cached
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = next(module.parameters()).device
    ddp = DDP(module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
              find_unused_parameters=True)
    object.__setattr__(module, "_smof_ddp", ddp)  # not a submodule: kept out of module.modules()
    return ddp
