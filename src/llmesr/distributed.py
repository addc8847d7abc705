"""Distributed data-parallel training under ``torchrun`` (PyTorch DDP).

``torchrun --nproc_per_node N -m llmesr train DATA ...`` starts N copies of the usual
command; each finds ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` in its environment and joins
one process group (gloo on CPU, NCCL on CUDA). How the trainer splits the work:

- **Batches.** Every rank draws the *whole* epoch's order and each global batch (negatives,
  Bert4Rec masks, teachers) from the same seeded generator, then keeps its own contiguous
  share of the batch's users. The global batch is the one a single process would train on,
  so ``--set batch_size`` means the same thing at any world size, and a run's numpy
  generator state is the same on every rank (one checkpoint serves them all).
- **The loss.** Each rank's loss is scaled so that DDP's gradient average equals the
  gradient of the single-process loss (a mean over the global batch's positions): the
  losses and weights of an N-process run match a one-process run up to float rounding
  when no random op runs inside the model (dropout 0; ``ce`` or ``bce``). With dropout each
  rank draws its own masks (torch is seeded per epoch and rank).
- **Gradients.** The ID table gives dense gradients under DDP (the sparse lookups of a
  single process are for speed only, and DDP's buckets are dense); the frozen LLM table
  is a buffer, outside the optimiser and the buckets, and buffers are not broadcast (none
  of them changes in training).
- **Evaluation.** Full ranking is sharded: each rank ranks a contiguous share of the users
  and the ranks are gathered in order on every rank (early stopping decides the same on
  all). The sampled protocol is cheap and is run whole on every rank.
- **Files.** Rank 0 writes the run directory (config, logs, TensorBoard, checkpoints,
  metrics); ``--resume`` loads the checkpoint on every rank.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from llmesr.errors import LlmesrError


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) with a world of
    more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise LlmesrError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def init_from_env(device: str = "auto") -> bool:
    """Join the process group torchrun describes (no-op for one process); returns whether
    training is distributed. NCCL when the run trains on CUDA, else gloo."""
    if not launched():
        return False
    if active():
        return True
    if not dist.is_available():
        raise LlmesrError("this PyTorch build has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise LlmesrError(f"WORLD_SIZE is set but {', '.join(missing)} not: start distributed "
                          "runs with torchrun --nproc_per_node N -m llmesr train ...")
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK for a CUDA run, else ``device``."""
    if active() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def share(n: int, r: int | None = None, w: int | None = None) -> slice:
    """Rank ``r``'s contiguous share of ``n`` items (the first ``n % w`` ranks get one more)."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def gather_concat(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each array concatenated over the ranks in rank order (every rank gets the result)."""
    if not active():
        return arrays
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, [np.asarray(a) for a in arrays])
    return tuple(np.concatenate([part[i] for part in out]) for i in range(len(arrays)))


def sum_floats(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over the ranks (the same keys on every rank)."""
    if not active() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(keys, t.cpu().tolist()))


def barrier() -> None:
    if active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[local_rank()])
        else:
            dist.barrier()
