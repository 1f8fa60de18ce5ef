"""The shared-block collate: default_collate's batches, one shared-memory block a batch from a worker."""
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from motionssl.stores import open_store
from motionssl.train.collate import POOL_BLOCKS, collate
from motionssl.train.datasets import Needs, seed_worker
from motionssl.train.methods.cmd import CMDClips, MotionTarget


def sample(i: int) -> dict:
    """Every kind of leaf a sample can hold, nested as ClipDataset nests them."""
    g = torch.Generator().manual_seed(i)
    return {
        "index": i, "score": 0.25 * i, "flag": i % 2 == 0, "name": f"video{i}",
        "views": [{"rgb": torch.randint(0, 255, (3, 4, 6, 6), dtype=torch.uint8, generator=g),
                   "rgb_color": torch.rand(10, dtype=torch.float64, generator=g),
                   "mv": torch.randn(2, 4, 3, 3, generator=g),
                   "mv_valid": torch.rand(1, 4, 3, 3, generator=g) > 0.5,
                   "frames": torch.arange(4) + i}] * 2,
        "stats": np.full((3,), i, np.float32), "count": np.int64(i),
        "pair": (torch.full((2,), i, dtype=torch.int16), i),
    }


def assert_same_batch(got, ref) -> None:
    """Same structure, container types, dtypes, shapes and values."""
    assert type(got) is type(ref)
    if isinstance(ref, dict):
        assert list(got) == list(ref)
        for key in ref:
            assert_same_batch(got[key], ref[key])
    elif isinstance(ref, list):
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            assert_same_batch(a, b)
    elif isinstance(ref, torch.Tensor):
        assert got.dtype == ref.dtype and got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    else:
        assert got == ref


def tensors(batch) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, list) else []
    return [t for v in values for t in tensors(v)]


class Samples(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return sample(i)


def test_collate_is_default_collate_in_the_main_process():
    samples = [sample(i) for i in range(3)]
    assert_same_batch(collate(samples), default_collate(samples))


def test_a_worker_batch_crosses_as_one_shared_block():
    """From workers: the same batches as default_collate's, every tensor a view of one block (default_collate's
    tensors each have their own storage, one file descriptor each)."""
    ref = list(DataLoader(Samples(), batch_size=3, num_workers=2, collate_fn=default_collate))
    got = list(DataLoader(Samples(), batch_size=3, num_workers=2, collate_fn=collate))
    assert len(got) == len(ref) == 3
    for a, b in zip(got, ref):
        assert_same_batch(a, b)
        assert len({t.untyped_storage().data_ptr() for t in tensors(a)}) == 1
        assert len({t.untyped_storage().data_ptr() for t in tensors(b)}) == len(tensors(b)) == 17


def block_inode(t: torch.Tensor) -> int:
    """The shared-memory file under a tensor the main process got from a worker."""
    fd, _ = t.untyped_storage()._share_fd_cpu_()  # already shared: its own descriptor, no copy
    return os.fstat(fd).st_ino


def test_blocks_are_reused_only_once_nothing_holds_them():
    """A worker writes later batches into blocks the main process let go of (few files for many batches), and never
    into one still held, even through a view of another dtype only (such views keep no reference to the batch)."""
    loader = DataLoader(Samples(), batch_size=2, sampler=list(range(8)) * 10, num_workers=1, collate_fn=collate)
    ref = [default_collate([sample(i) for i in range(j, j + 2)]) for j in (0, 2, 4, 6)]
    held, inodes = [], set()
    for n, batch in enumerate(loader):
        inodes.add(block_inode(batch["index"]))
        if n % 10 == 0:  # keep only reinterpreting views, which torch does not link to their source (no _base)
            held.append((n, batch["views"][0]["mv"].view(torch.int32), batch["views"][1]["rgb"].view(torch.int8)))
        del batch
    assert len(inodes) <= POOL_BLOCKS + 2, len(inodes)  # 40 batches: each block used 4 times or more
    for n, mv, rgb in held:
        expected = ref[n % 4]["views"]
        torch.testing.assert_close(mv, expected[0]["mv"].view(torch.int32), rtol=0, atol=0)
        torch.testing.assert_close(rgb, expected[1]["rgb"].view(torch.int8), rtol=0, atol=0)


def test_slots_do_not_overlap():
    """Writing one tensor of a batch leaves every other one unchanged."""
    batch = collate([sample(i) for i in range(2)])
    before = [t.clone() for t in tensors(batch)]
    for k, t in enumerate(tensors(batch)):
        t.fill_(1)
        for j, (u, old) in enumerate(zip(tensors(batch), before)):
            if j > k:
                torch.testing.assert_close(u, old, rtol=0, atol=0)


def test_samples_default_collate_cannot_stack_fail_as_they_do_there():
    samples = [{"x": torch.zeros(2)}, {"x": torch.zeros(3)}]
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate(samples)
    with pytest.raises(RuntimeError, match="equal size"):
        collate(samples)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_clip_batches_from_workers_equal_the_main_process(tiny_stores, fmt):
    """CMD's clips (every clip modality, two views, future motion, a hard negative, an I-frame) through 2 workers and
    the shared-block collate equal the main process's default_collate batches."""
    needs = Needs(modalities=("rgb", "mv", "boundary", "edges"), clip_len=4, stride=2, views=2)
    ds = CMDClips(open_store(tiny_stores[fmt]), needs, target=MotionTarget(frames=2, negatives=1), iframe_window=2,
                  size=16)
    keys = [(i % len(ds), i // len(ds)) for i in range(6)]
    ref = list(DataLoader(ds, batch_size=2, sampler=keys, num_workers=0, collate_fn=default_collate))
    got = list(DataLoader(ds, batch_size=2, sampler=keys, num_workers=2, worker_init_fn=seed_worker,
                          collate_fn=collate))
    assert len(got) == len(ref) == 3
    for a, b in zip(got, ref):
        assert_same_batch(a, b)
