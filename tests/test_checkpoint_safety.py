"""Checkpoints cannot run code: everything in them loads with torch.load(weights_only=True); a crafted file is
refused by every command that reads one, and its code never runs; format-1 files (numpy RNG state, before) are
refused naming the converter, which converts them only with --trust and then they resume."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fixtures.make_old_checkpoint import OLD_RUN, make_store
from motionssl.cli import app
from motionssl.train import checkpoint
from motionssl.train.run_log import read_log

OLD = Path(__file__).parent / "fixtures" / "old_format_checkpoint.pt"


class CreatesAFile:
    """Unpickling this calls open(path, "w"): the file appears if the loader runs what a pickle says."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(r) -> str:
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("ckpt_safety"))


@pytest.fixture
def labels(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("video_id,label,split\nv0,a,train\nv1,b,train\nv2,a,test\nv3,b,test\n")
    return path


def test_rng_states_survive_the_safe_loader_exactly(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.standard_normal()  # numpy caches the second gaussian: that is state too
    checkpoint.save(tmp_path / "c.pt", {"rng": [checkpoint.rng_state()]})
    ahead = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    checkpoint.set_rng_state(torch.load(tmp_path / "c.pt", weights_only=True)["rng"][0])
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == ahead


def test_a_crafted_checkpoint_is_refused_everywhere_and_its_code_never_runs(store, labels, tmp_path):
    marker = tmp_path / "pwned"
    real = tmp_path / "real"
    assert cli("pretrain", store, "-o", real, *OLD_RUN, "--halt-after", "1").exit_code == 0
    payload = torch.load(real / checkpoint.LAST, weights_only=True)
    assert payload["format"] == checkpoint.FORMAT
    evil = tmp_path / "evil.pt"
    torch.save({**payload, "config": {**payload["config"], "note": CreatesAFile(marker)}}, evil)
    (tmp_path / "evil_run").mkdir()
    (tmp_path / "evil_run" / checkpoint.LAST).write_bytes(evil.read_bytes())
    commands = {
        "--resume PATH": ["pretrain", store, "-o", tmp_path / "r1", *OLD_RUN, "--resume", evil],
        "--resume auto": ["pretrain", store, "-o", tmp_path / "evil_run", *OLD_RUN, "--resume", "auto"],
        "finetune": ["finetune", "--checkpoint", evil, store, "--labels", labels, "-o", tmp_path / "f",
                     "--steps", "1"],
        "evaluate retrieve": ["evaluate", "retrieve", "--checkpoint", evil, store, "--labels", labels,
                              "-o", tmp_path / "e1"],
        "evaluate classify": ["evaluate", "classify", "--checkpoint", evil, store, "--labels", labels,
                              "-o", tmp_path / "e2"],
        "evaluate motion": ["evaluate", "motion", store, "--checkpoint", evil, "-o", tmp_path / "e3"],
        "show": ["show", store, "v0", "--checkpoint", evil, "-o", tmp_path / "s.png"],
        "convert-checkpoint --trust": ["convert-checkpoint", evil, "-o", tmp_path / "c.pt", "--trust"],
    }
    called = f"{open.__module__}.{open.__qualname__}"
    for name, args in commands.items():
        line = one_line_error(cli(*args))
        assert str(evil if name != "--resume auto" else tmp_path / "evil_run" / checkpoint.LAST) in line, name
        assert f"would call {called}" in line, (name, line)
        assert not marker.exists(), f"{name} ran the checkpoint's code"
    assert not (tmp_path / "c.pt").exists() and not (tmp_path / "s.png").exists()
    torch.load(evil, weights_only=False)  # the file is live: the full unpickler creates the marker
    assert marker.exists()


def test_a_format1_checkpoint_is_refused_naming_the_converter_which_needs_trust(store, labels, tmp_path):
    """The fixture was written by the code at 60e63ba (tests/fixtures/make_old_checkpoint.py)."""
    for args in (["pretrain", store, "-o", tmp_path / "r", *OLD_RUN, "--resume", OLD],
                 ["finetune", "--checkpoint", OLD, store, "--labels", labels, "-o", tmp_path / "f"],
                 ["evaluate", "retrieve", "--checkpoint", OLD, store, "--labels", labels,
                  "-o", tmp_path / "e"]):
        line = one_line_error(cli(*args))
        assert f"{OLD} is a format-1 checkpoint" in line and f"motionssl convert-checkpoint {OLD} -o" in line, line
    new = tmp_path / "new.pt"
    line = one_line_error(cli("convert-checkpoint", OLD, "-o", new))
    assert "only with --trust" in line and not new.exists()

    r = cli("convert-checkpoint", OLD, "-o", new, "--trust")
    assert r.exit_code == 0, r.output
    converted = torch.load(new, weights_only=True)
    with torch.serialization.safe_globals([np.ndarray, np.dtype, type(np.dtype(np.uint32)),
                                           np.zeros(0).__reduce__()[0]]):
        old = torch.load(OLD, weights_only=True)
    assert converted["format"] == checkpoint.FORMAT and converted["step"] == old["step"] == 2
    assert all(torch.equal(converted["method"][k], v) for k, v in old["method"].items())
    checkpoint.set_rng_state(converted["rng"][0])
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    assert (kind, keys.tolist(), pos, has_gauss, gauss) == (old["rng"][0]["numpy"][0],
                                                           old["rng"][0]["numpy"][1].tolist(),
                                                           *old["rng"][0]["numpy"][2:])
    assert random.getstate() == old["rng"][0]["python"]
    assert "already a format-2 checkpoint" in one_line_error(cli("convert-checkpoint", new, "-o", tmp_path / "x.pt"))

    r = cli("pretrain", store, "-o", tmp_path / "resumed", *OLD_RUN, "--resume", new)
    assert r.exit_code == 0, r.output
    assert [row["step"] for row in read_log(tmp_path / "resumed")] == [3, 4, 5, 6]
    assert checkpoint.load(tmp_path / "resumed" / checkpoint.LAST)["step"] == 6
