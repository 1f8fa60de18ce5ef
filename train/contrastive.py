"""Contrastive losses as pure functions, the MoCo queue, the momentum (EMA) encoder update and the projection head.

Every loss takes L2-normalised embeddings (it does not normalise), divides cosine similarities by the temperature
`tau`, detaches nothing (MoCo's key encoder runs under no_grad at the call site) and averages over queries.
Similarities are computed in float32 even under autocast: bf16 keeps about 3 significant digits, and dividing by
tau = 0.07 turns its rounding into errors of several hundredths on the logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motionssl.train.distributed import is_distributed, shuffle_batch, unshuffle_batch
from motionssl.train.shuffle_bn import bn_groups_for, group_shuffle, max_groups


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo v2's 2-layer MLP: Linear, ReLU, Linear (no normalisation; the method normalises its output)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def similarities(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """(a @ b.T) / tau in float32, whatever autocast is active."""
    with torch.autocast(a.device.type, enabled=False):
        return a.float() @ b.float().T / tau


def info_nce(q: Tensor, k: Tensor, queue: Tensor | None = None, tau: float = 0.07, *,
             queue_mask: Tensor | None = None) -> Tensor:
    """InfoNCE of queries q (B, D) against keys k (B, D); the positive of q_i is k_i.

    With a queue (K, D), MoCo: the negatives of q_i are the K queue rows only (the other keys of the batch are
    not used), so with s = q.k / tau
        loss_i = -log( exp(s(q_i, k_i)) / (exp(s(q_i, k_i)) + sum_j exp(s(q_i, queue_j))) ),
    and `queue_mask` (B, K) bool drops queue entry j from query i's denominator where True (e.g. same video).
    Without a queue, in-batch: the negatives of q_i are the other keys k_j, j != i, i.e. cross entropy over the
    logits q @ k.T / tau with targets arange(B) (one direction of CLIP's loss; SimCLR's NT-Xent would also
    contrast q_i with the other queries). Returns the mean over the batch.
    """
    if queue is None:
        if queue_mask is not None:
            raise ValueError("queue_mask needs a queue")
        logits = similarities(q, k, tau)
        return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))
    with torch.autocast(q.device.type, enabled=False):
        positive = (q.float() * k.float()).sum(dim=1, keepdim=True) / tau
    negatives = similarities(q, queue, tau)
    if queue_mask is not None:
        negatives = negatives.masked_fill(queue_mask, float("-inf"))
    logits = torch.cat([positive, negatives], dim=1)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def check_positives(pos_mask: Tensor, n_queries: int, n_keys: int) -> None:
    if pos_mask.shape != (n_queries, n_keys) or pos_mask.dtype != torch.bool:
        raise ValueError(f"pos_mask must be bool of shape (B, N) = {(n_queries, n_keys)}, "
                         f"got {pos_mask.dtype} {tuple(pos_mask.shape)}")
    if not pos_mask.any(dim=1).all():
        raise ValueError("every query needs at least one positive in pos_mask")


def info_nce_multi(q: Tensor, keys: Tensor, pos_mask: Tensor, tau: float) -> Tensor:
    """Multi-positive InfoNCE, averaged over each query's positives (SupCon's L_out form).

    q (B, D), keys (N, D), pos_mask (B, N) bool, True where keys[n] is a positive of q[i]. With s = q.k / tau and
    P_i = {n : pos_mask[i, n]},
        loss_i = -1/|P_i| * sum_{p in P_i} log( exp(s_ip) / sum_{n=1..N} exp(s_in) ),
    the denominator running over all N keys, positives included. Mean over i. A row with no positive is an error.
    With keys = k and pos_mask = eye(B) this is `info_nce(q, k)`. CoCLR's released code (`multi_nce_loss`) uses
    the other form, the log of the summed positives: that is `mil_nce`.
    """
    check_positives(pos_mask, q.shape[0], keys.shape[0])
    log_prob = F.log_softmax(similarities(q, keys, tau), dim=1)
    return (-(log_prob * pos_mask).sum(dim=1) / pos_mask.sum(dim=1)).mean()


def mil_nce(q: Tensor, keys: Tensor, pos_mask: Tensor, tau: float) -> Tensor:
    """Multi-positive InfoNCE with the positives summed inside the log (MIL-NCE, CoCLR's `multi_nce_loss`):
        loss_i = -log( sum_{p in P_i} exp(s_ip) / sum_{n=1..N} exp(s_in) ),
    same arguments as `info_nce_multi`. Mean over i; a row with no positive is an error.
    """
    check_positives(pos_mask, q.shape[0], keys.shape[0])
    log_prob = F.log_softmax(similarities(q, keys, tau), dim=1)
    return -torch.logsumexp(log_prob.masked_fill(~pos_mask, float("-inf")), dim=1).mean()


class MoCoQueue(nn.Module):
    """A ring buffer of the last `size` keys and the video each came from, checkpointed with the model.

    Starts with random unit keys of video -1 (no real video), as MoCo does. `enqueue` writes in place, so a loss
    that is backpropagated after it must be given `queue.keys.clone()`.
    """

    keys: Tensor
    video_ids: Tensor
    ptr: Tensor

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("video_ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: Tensor, video_ids: Tensor) -> None:
        """Overwrite the oldest entries with keys (n, D), wrapping around; of more than `size` keys the last stay."""
        n = keys.shape[0]
        if n > self.size:
            keys, video_ids, n = keys[-self.size:], video_ids[-self.size:], self.size
        slots = (self.ptr + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[slots] = keys.detach().to(self.keys.dtype)
        self.video_ids[slots] = video_ids.to(self.video_ids.device, torch.long)
        self.ptr.copy_((self.ptr + n) % self.size)

    def negatives_mask(self, video_ids: Tensor) -> Tensor:
        """(B, size) bool, True where the queue entry comes from query i's own video: not a negative for it."""
        return video_ids.to(self.video_ids.device, torch.long)[:, None] == self.video_ids[None, :]


def momentum_at(step: int, total_steps: int, base: float = 0.99) -> float:
    """BYOL's schedule: m = 1 - (1 - base) * (cos(pi * step / total_steps) + 1) / 2, base at step 0, 1 at the end."""
    progress = min(max(step, 0), total_steps) / max(total_steps, 1)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """target <- m * target + (1 - m) * online for every parameter; buffers (BN statistics) are copied."""
    for p_online, p_target in zip(online.parameters(), target.parameters(), strict=True):
        p_target.mul_(m).add_(p_online.detach(), alpha=1.0 - m)
    for b_online, b_target in zip(online.buffers(), target.buffers(), strict=True):
        b_target.copy_(b_online)


@torch.no_grad()
def momentum_keys(backbone: nn.Module, head: nn.Module, clips: Tensor, *, seed: int) -> Tensor:
    """L2-normalised keys of a momentum encoder, computed in MoCo's shuffled-BN order (drawn from `seed`): across
    ranks under torchrun, across the backbone's BatchNorm groups in one process (train/shuffle_bn.py)."""
    if is_distributed():
        shuffled, order = shuffle_batch(clips, seed=seed)
        return unshuffle_batch(F.normalize(head(backbone(shuffled)), dim=1), order)
    groups = bn_groups_for(clips.shape[0], max_groups(backbone))
    order = group_shuffle(clips.shape[0], groups, torch.Generator().manual_seed(seed)).to(clips.device)
    return F.normalize(head(backbone(clips[order])), dim=1)[torch.argsort(order)]
