"""DataLoader worker failures reach the main process typed (train/faults.py): a StoreError raised in a worker comes
back as a StoreError with its own one-line message, whatever the message says; other errors pass through as torch
raises them; a worker's error is never taken for a timeout because of its wording."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from motionssl.stores import StoreError
from motionssl.train.faults import DataTimeout, TrackedDataset, next_batch


class Failing(Dataset):
    videos = ["a", "b", "c", "d"]

    def __init__(self, error: Exception | None):
        self.error = error

    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 2 and self.error is not None:
            raise self.error
        return {"index": i, "x": torch.zeros(2)}


def batches(error, workers):
    tracked = TrackedDataset(Failing(error), workers=workers)
    loader = DataLoader(tracked, batch_size=1, num_workers=workers, timeout=30 if workers else 0)
    return iter(loader), tracked


@pytest.mark.parametrize("workers", [0, 2])
def test_a_store_error_in_a_worker_comes_back_as_itself(workers):
    message = "cannot read rgb of video 'c' in s.zarr (StoreError: nested; DataLoader timed out in the text)"
    it, tracked = batches(StoreError(message), workers)
    with pytest.raises(StoreError) as e:
        for _ in range(4):
            next_batch(it, tracked, timeout=30, store_path="s.zarr")
    assert str(e.value) == message and e.value.__cause__ is None


def test_other_worker_errors_pass_through_and_are_not_timeouts():
    it, tracked = batches(RuntimeError("DataLoader timed out after 0 seconds (a message, not a timeout)"), 2)
    with pytest.raises(RuntimeError) as e:
        for _ in range(4):
            next_batch(it, tracked, timeout=30, store_path="s.zarr")
    assert not isinstance(e.value, (DataTimeout, StoreError)) and "Caught RuntimeError in DataLoader worker" in str(e.value)


def test_a_clean_loader_gives_every_batch():
    it, tracked = batches(None, 2)
    got = [int(next_batch(it, tracked, timeout=30, store_path="s.zarr")["index"]) for _ in range(4)]
    assert got == [0, 1, 2, 3] and tracked.worker_error() is None
