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
