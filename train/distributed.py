"""One process or many under torchrun: the process group from the environment, and MoCo's all-gather.

Every function here is a no-op (or the identity) in a single process, so the training code has no branches for it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_env() -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    NCCL with one GPU per process (cuda:LOCAL_RANK) when CUDA is available, else gloo on the CPU. Without
    WORLD_SIZE, or with WORLD_SIZE=1, nothing is initialised: rank 0 of 1, on cuda:0 if there is a GPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size == 1:
        return DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cuda:0" if cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size,
                                **({"device_id": device} if cuda else {}))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


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

    Every rank must pass the same shape. In a single process x itself comes back, unchanged (gradient included).
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
    single process the batch comes back unchanged (the order would not change its statistics).
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
