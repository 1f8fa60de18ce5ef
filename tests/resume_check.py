"""The exact-resume check of a method's `pretrain` (the pattern of test_pretrain.test_resume_continues_exactly)."""
from pathlib import Path

import pytest
import torch

from motionssl.train import checkpoint
from motionssl.train.run_log import read_log
from test_extract import motionssl

# Tiny nets on two threads of a shared 2-core machine: OpenMP threads spin-waiting for a descheduled partner made
# steps take 0.03-4.5 s (measured); one thread runs them at a steady 0.03 s.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def assert_resume_is_exact(common: list, tmp_path: Path, log_keys: tuple[str, ...]) -> None:
    """`common`: `pretrain` arguments for a 6-step deterministic run. One run goes straight through (0 workers); one
    halts at step 3 (2 workers) and resumes from its saved config (0 workers): same logs, same final state."""
    straight, halted = tmp_path / "straight", tmp_path / "halted"
    r = motionssl("pretrain", *common, "-o", straight, "--workers", "0", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    r = motionssl("pretrain", *common, "-o", halted, "--workers", "2", "--halt-after", "3", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    r = motionssl("pretrain", "-o", halted, "--resume", "auto", "--workers", "0", "--no-progress", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    a, b = read_log(straight), read_log(halted)
    assert [row["step"] for row in b] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", *log_keys):
        assert [row[key] for row in a] == [row[key] for row in b], key
    sa, sb = (checkpoint.load(p / "checkpoint.pt")["method"] for p in (straight, halted))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def one_thread():
    """torch on one thread for the test (see ONE_THREAD), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
