"""MoCo's shuffling BN in one process: BatchNorm statistics per group of clips, and keys dealt across groups.

BatchNorm leaks in MoCo-style training. With one set of statistics per batch, the positive key is the only key
computed from the current batch's statistics (the queue's negatives come from earlier batches), so the pretext
task can be solved from those statistics instead of from content (MoCo §3.3, MCL §4.2). Under torchrun each
process has its own statistics and `distributed.shuffle_batch` deals the keys out to other processes. In one
process this module emulates that, as MoCo's single-GPU code (SplitBatchNorm) does:

- `GroupedBatchNorm` computes training statistics separately for `g` interleaved groups of the batch: clip i is in
  group i % g. The online (query) encoder and its momentum copy both use it.
- `group_shuffle` orders the key batch so that each key group holds clips of as many different query groups as
  possible: when the groups hold B/g <= g clips, no clip's key shares its statistics with any companion of its query
  group; beyond that, at most ceil(B / g^2) companions do. A uniform random permutation, as MoCo uses across GPUs,
  leaves some keys with all of their companions.

g is the largest divisor of the per-process batch up to the method's `bn_groups` (default 8, as MoCo's demo) that
leaves at least `MIN_GROUP` (8) clips per group: batch 16 gives 2 groups, 32 gives 4, 64 gives 8; a batch under 16
has one group and no shuffle. Under torchrun, g is 1: each process's statistics are a group already.
Running statistics are the mean over groups, so evaluation (which uses them) sees one BatchNorm, and the state dict
keeps BatchNorm's keys: backbones export to `finetune` and load from older checkpoints unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from motionssl.train.distributed import is_distributed

MIN_GROUP = 8  # clips per statistics group (MoCo's had 32): with 4, a clip's features hinged on its 3 companions


def bn_groups_for(batch: int, max_groups: int) -> int:
    """The number of statistics groups for a batch: the largest divisor of `batch` that is at most `max_groups` and
    leaves at least MIN_GROUP clips per group (1 when none does, and under torchrun)."""
    if is_distributed():
        return 1
    return max((g for g in range(1, max(max_groups, 1) + 1) if batch % g == 0 and batch // g >= MIN_GROUP),
               default=1)


class GroupedBatchNorm(_BatchNorm):
    """BatchNorm (any number of spatial dims) whose training statistics come from interleaved groups of the batch.

    In training mode, with g = bn_groups_for(N, groups), clip i is normalised with the mean and variance of the
    clips j with j % g == i % g, and the running statistics move towards the mean of the groups' statistics. In
    evaluation mode it is plain BatchNorm. Parameters and buffers are BatchNorm's, under the same names.
    """

    def __init__(self, bn: _BatchNorm, groups: int):
        like = bn.weight if bn.affine else bn.running_mean
        super().__init__(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats, device=getattr(like, "device", None),
                         dtype=getattr(like, "dtype", None))
        self.load_state_dict(bn.state_dict())
        self.groups = groups

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        g = bn_groups_for(n, self.groups)
        if not self.training or g == 1:
            return super().forward(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        # (N, C, ...) -> (N/g, g*C, ...): row m holds clips m*g .. m*g+g-1, so channel s*C + c sees group s only.
        mean = var = None
        if self.track_running_stats:
            mean, var = self.running_mean.repeat(g), self.running_var.repeat(g)
        weight = self.weight.repeat(g) if self.affine else None
        bias = self.bias.repeat(g) if self.affine else None
        y = F.batch_norm(x.reshape(n // g, g * c, *x.shape[2:]), mean, var, weight, bias, True, momentum, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(mean.view(g, c).mean(0))
                self.running_var.copy_(var.view(g, c).mean(0))
        return y.view_as(x)


def group_batch_norms(module: nn.Module, groups: int) -> nn.Module:
    """Replace every BatchNorm inside `module` by a GroupedBatchNorm with up to `groups` groups, in place."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, GroupedBatchNorm):
            setattr(module, name, GroupedBatchNorm(child, groups))
        else:
            group_batch_norms(child, groups)
    return module


def max_groups(module: nn.Module) -> int:
    """The `groups` of the GroupedBatchNorm layers in `module` (1 when it has none)."""
    return max((m.groups for m in module.modules() if isinstance(m, GroupedBatchNorm)), default=1)


def group_shuffle(batch: int, groups: int, generator: torch.Generator) -> Tensor:
    """A permutation `order` of range(batch): position p of the key batch holds clip order[p], so key group h
    (positions p with p % groups == h) holds the clips order[h], order[h + groups], ...

    Query groups are the rows of a (groups, batch/groups) table of clip indices (clip i in row i % groups); rows
    and the clips within each row are drawn in random order, the table is read column by column, and each run of
    batch/groups clips of that reading becomes one key group: runs of up to `groups` consecutive entries of a
    column-major reading come from different rows.
    """
    if batch % groups:
        raise ValueError(f"a batch of {batch} does not split into {groups} groups")
    n = batch // groups
    table = torch.arange(batch).view(n, groups).T  # row a: the clips of query group a
    table = table[torch.randperm(groups, generator=generator)]
    table = torch.gather(table, 1, torch.argsort(torch.rand(groups, n, generator=generator), dim=1))
    runs = table.T.reshape(groups, n)  # run h: entries h*n .. h*n+n-1 of the column-major reading
    return runs.T.reshape(batch)  # position h + groups*j <- run h, entry j
