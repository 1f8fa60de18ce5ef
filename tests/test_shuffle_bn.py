"""MoCo's shuffling BN across 2 gloo processes: shares are a seeded permutation of the global batch, undone exactly."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from motionssl.train.distributed import cleanup, shuffle_batch, unshuffle_batch


def shuffle_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    x = torch.arange(4, dtype=torch.float32)[:, None] + 10 * rank  # rank 0: 0..3, rank 1: 10..13
    shuffled, order = shuffle_batch(x, seed=7)
    again, _ = shuffle_batch(x, seed=7)
    result = {"shuffled": shuffled, "order": order, "again": again, "back": unshuffle_batch(shuffled * 2, order)}
    cleanup()
    torch.save(result, os.path.join(out_dir, f"{rank}.pt"))


def test_shuffle_and_unshuffle_two_processes(tmp_path):
    mp.spawn(shuffle_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    everything = torch.cat([torch.arange(4.0), torch.arange(4.0) + 10])[:, None]
    order = results[0]["order"]
    assert torch.equal(order, results[1]["order"])  # same seed, same permutation on every rank, no broadcast
    assert sorted(order.tolist()) == list(range(8)) and order.tolist() != list(range(8))
    assert torch.equal(torch.cat([r["shuffled"] for r in results]), everything[order])
    for rank, r in enumerate(results):
        assert torch.equal(r["again"], r["shuffled"])
        assert torch.equal(r["back"], 2 * (torch.arange(4.0)[:, None] + 10 * rank))  # each row back on its rank


def test_single_process_is_the_identity():
    x = torch.randn(5, 3)
    shuffled, order = shuffle_batch(x, seed=1)
    assert shuffled is x and torch.equal(unshuffle_batch(shuffled, order), x)


# -- one process: grouped BatchNorm statistics and keys dealt across groups ------------------------------------------

import copy  # noqa: E402

import pytest  # noqa: E402
from torch import nn  # noqa: E402

from motionssl.train.backbones import r3d_10  # noqa: E402
from motionssl.train.contrastive import momentum_keys  # noqa: E402
from motionssl.train.shuffle_bn import (MIN_GROUP, GroupedBatchNorm, bn_groups_for, group_batch_norms,  # noqa: E402
                                        group_shuffle)


@pytest.mark.parametrize("batch, most, expected", [(64, 8, 8), (32, 8, 4), (16, 8, 2), (8, 8, 1), (48, 8, 6),
                                                   (24, 8, 3), (64, 1, 1), (60, 8, 6), (128, 8, 8)])
def test_groups_for_a_batch(batch, most, expected):
    g = bn_groups_for(batch, most)
    assert g == expected and batch % g == 0 and (g == 1 or batch // g >= MIN_GROUP)


def test_grouped_batch_norm_is_batch_norm_on_each_group():
    """Naive reference: a plain BatchNorm3d run on each interleaved group alone; running statistics are the mean of
    the groups' updates."""
    torch.manual_seed(0)
    plain = nn.BatchNorm3d(3, momentum=0.2)
    plain.weight.data.uniform_(0.5, 2), plain.bias.data.normal_()
    grouped = GroupedBatchNorm(copy.deepcopy(plain), groups=4)
    x = torch.randn(32, 3, 2, 5, 5) * 3 + 1
    y = grouped(x)
    g = bn_groups_for(32, 4)
    assert g == 4
    updated = []
    for s in range(g):
        ref = copy.deepcopy(plain)
        torch.testing.assert_close(y[s::g], ref(x[s::g]), rtol=1e-5, atol=1e-5)
        updated.append((ref.running_mean, ref.running_var))
    torch.testing.assert_close(grouped.running_mean, torch.stack([m for m, _ in updated]).mean(0))
    torch.testing.assert_close(grouped.running_var, torch.stack([v for _, v in updated]).mean(0))
    assert grouped.num_batches_tracked.item() == 1
    grouped.eval(), plain.eval()
    plain.load_state_dict(grouped.state_dict())  # same keys: checkpoints and `finetune` see a BatchNorm
    torch.testing.assert_close(grouped(x), plain(x))


@pytest.mark.parametrize("batch, groups", [(8, 2), (16, 4), (32, 8), (48, 6), (64, 4), (12, 3)])
def test_key_groups_mix_query_groups(batch, groups):
    n = batch // groups
    for seed in range(20):
        order = group_shuffle(batch, groups, torch.Generator().manual_seed(seed))
        assert sorted(order.tolist()) == list(range(batch))
        for h in range(groups):
            members = order[h::groups]  # the clips in key group h
            per_query_group = torch.bincount(members % groups, minlength=groups)
            assert per_query_group.max() <= -(-n // groups)  # ceil(n / groups): 1 when n <= groups


def influence(fn, x: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: [i, j] is True when changing clip j changes output i."""
    base = fn(x)
    out = torch.zeros(x.shape[0], x.shape[0], dtype=torch.bool)
    for j in range(x.shape[0]):
        bumped = x.clone()
        bumped[j] += torch.randn_like(bumped[j])
        out[:, j] = (fn(bumped) - base).abs().amax(dim=1) > 1e-4
    return out


@pytest.mark.parametrize("grouped", [True, False])
def test_no_key_shares_statistics_with_its_query_companions(grouped):
    """The leak MoCo §3.3 closes: in the query's arrangement, clip i's query is normalised with its group's
    statistics; its key must not be normalised with statistics of those same clips. With plain BatchNorm (or no
    shuffle) both see the whole batch and the property fails."""
    torch.manual_seed(0)
    backbone = r3d_10(width=4)
    if grouped:
        group_batch_norms(backbone, 8)
    head = nn.Linear(backbone.out_dim, 8)
    backbone_k, head_k = copy.deepcopy(backbone), copy.deepcopy(head)
    x = torch.randn(64, 3, 2, 8, 8)
    with torch.no_grad():
        queries = influence(lambda v: head(backbone(v)), x)
        keys = influence(lambda v: momentum_keys(backbone_k, head_k, v, seed=3), x)
    companions = queries & keys  # clips whose content reaches both clip i's query and its key
    if grouped:
        assert bn_groups_for(64, 8) == 8
        assert queries.sum(1).tolist() == [8] * 64 and keys.sum(1).tolist() == [8] * 64  # groups of 8 clips
        assert torch.equal(companions, torch.eye(64, dtype=torch.bool))  # only the clip itself
    else:
        assert companions.all()


def test_momentum_methods_group_their_batch_norms(tmp_path):
    from motionssl.train.config import PretrainConfig
    from motionssl.train.methods import METHODS

    for name in ("rgb-moco", "mcl", "modist", "mvcgc"):
        cfg = PretrainConfig(method=name, store="x", out="x", backbone="r3d10", backbone_width=4, clip_len=4,
                             stride=1, size=32, batch_size=8)
        model = METHODS[name](cfg, total_steps=10)
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert bns and all(isinstance(m, GroupedBatchNorm) and m.groups == 8 for m in bns), name
        exported = model.export_backbone()["state_dict"]
        assert set(exported) == set(r3d_10(width=4).state_dict()), name  # plain BatchNorm keys for finetune
