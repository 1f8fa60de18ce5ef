"""One process or many under torchrun: the process group from the environment, and MoCo's all-gather.

Every function here is a no-op (or the identity) without a process group (one process, unless MOTIONSSL_DIST_BACKEND
starts one under torchrun), so the training code has no branches for it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from motionssl.train.config import ConfigError


# "nccl" or "gloo": overrides the choice below; set, it also starts a process group of one under torchrun (the GPU
# check's DDP run). gloo keeps the processes on the CPU even where CUDA is present (tests on GPU hosts).
BACKEND_ENV = "MOTIONSSL_DIST_BACKEND"


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    group: bool = False  # a process group is up: the model trains under DDP


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def plan(*, world_size: int, local_rank: int, device_count: int, backend: str | None,
         torchrun: bool) -> tuple[str | None, torch.device]:
    """(backend of the process group to start, or None for none; this process's device). Pure: tested without GPUs.

    Raises ConfigError, one line, for an unknown backend, NCCL without a GPU, or fewer GPUs than local ranks."""
    if backend not in (None, "nccl", "gloo"):
        raise ConfigError(f"{BACKEND_ENV}={backend!r}: use nccl or gloo, or leave it unset")
    if backend == "nccl" and device_count == 0:
        raise ConfigError(f"{BACKEND_ENV}=nccl needs a CUDA GPU and this host shows none; unset it or use gloo")
    cuda = device_count > 0 and backend != "gloo"
    if cuda and local_rank >= device_count:
        raise ConfigError(f"LOCAL_RANK {local_rank} needs GPU cuda:{local_rank} but this host shows {device_count}; "
                          f"start at most {device_count} process(es) per node (torchrun --nproc_per_node "
                          f"{device_count}), or set {BACKEND_ENV}=gloo to train on the CPU")
    group = world_size > 1 or (backend is not None and torchrun)
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    return ("nccl" if cuda else "gloo") if group else None, device


def init_from_env() -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    NCCL with one GPU per process (cuda:LOCAL_RANK) when CUDA is available, else gloo on the CPU; MOTIONSSL_DIST_BACKEND
    (BACKEND_ENV) overrides. Without WORLD_SIZE, or with WORLD_SIZE=1, nothing is initialised unless that variable is
    set under torchrun: rank 0 of 1, on cuda:LOCAL_RANK if there is a GPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    backend, device = plan(world_size=world_size, local_rank=local_rank,
                           device_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                           backend=os.environ.get(BACKEND_ENV) or None, torchrun="RANK" in os.environ)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if backend is not None and not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                **({"device_id": device} if device.type == "cuda" else {}))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device, group=backend is not None)


def is_main() -> bool:
    """True on rank 0, and in a single process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def gather(x: Tensor) -> Tensor:
    """All ranks' x concatenated along dim 0 in rank order, without gradient (MoCo's concat_all_gather).

    Every rank must pass the same shape. Without a process group x itself comes back, unchanged (gradient included).
    """
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def shuffle_batch(x: Tensor, *, seed: int) -> tuple[Tensor, Tensor]:
    """MoCo's shuffling BN: deal the global batch out to the ranks in a random order before the key encoder.

    Batch-norm statistics of the keys then come from other ranks' clips than the queries', so the model cannot use
    them to find its positive. Returns this rank's shuffled share and the permutation `unshuffle_batch` undoes.
    The order is drawn from `seed` (the same on every rank), so it needs no broadcast and replays on resume. In a
    process without a process group the batch comes back unchanged (the order would not change its statistics).
    """
    if not is_distributed():
        return x, torch.arange(x.shape[0], device=x.device)
    everything = gather(x)
    order = torch.randperm(everything.shape[0], generator=torch.Generator().manual_seed(seed)).to(x.device)
    return everything[order.view(dist.get_world_size(), -1)[dist.get_rank()]], order


@torch.no_grad()
def unshuffle_batch(x: Tensor, order: Tensor) -> Tensor:
    """This rank's rows back in their original order, from the shuffled shares of every rank."""
    if not is_distributed():
        return x
    everything = gather(x)
    return everything[torch.argsort(order).view(dist.get_world_size(), -1)[dist.get_rank()]]
