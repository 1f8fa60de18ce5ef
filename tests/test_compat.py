"""Stores and a checkpoint written before the layer refactor (commit 60e63ba; tests/fixtures/make_old_fixtures.py)
read and load with today's code: every array byte for byte; the checkpoint, once through `convert-checkpoint` (the
safe loader refuses its numpy RNG state), giving the same backbone output and accepted by the trainer's resume and
the evaluation's loader."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from motionssl.stores import open_store, write_index
from motionssl.stores.verify import verify_store
from motionssl.train import checkpoint
from motionssl.train.config import config_from_dict
from motionssl.train.datasets import ClipDataset, Needs
from motionssl.train.features import load_backbone

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "old_expected.json").read_text())


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.mark.parametrize("name", ["old_store.zarr", "old_store_h5"])
def test_an_old_store_reads_byte_for_byte(name):
    store = open_store(FIXTURES / name)
    expected = EXPECTED["stores"][name]
    assert sorted(store.videos) == sorted(expected) == ["down", "right"]
    assert verify_store(store) == []
    for vid, arrays in expected.items():
        assert store.meta(vid)["frames"] == arrays.pop("frames")
        assert {a: digest(store.read(vid, a)) for a in store.arrays(vid)} == arrays
    sample = ClipDataset(store, Needs(modalities=("rgb", "mv"), clip_len=2, stride=2), size=16, train=False)[0]
    assert sample["views"][0]["mv"].shape == (2, 2, 4, 4)


@pytest.mark.parametrize("name, version", [("old_store.zarr", "sha256:9a722009dcf71513"),
                                           ("old_store_h5", "sha256:da21bd7b2cb4ddd8")])
def test_an_old_store_keeps_its_version_when_reindexed(name, version, tmp_path):
    """The version a run recorded on an old store (computed by re-serialising its index, as motionssl did before the
    canonical index.json) stays the same once the index is rewritten in today's form, as the next extract does: its
    resume sees no change."""
    store = tmp_path / name
    shutil.copytree(FIXTURES / name, store)
    assert open_store(store).version == version
    write_index(store, open_store(store).index)
    assert (store / "index.json").read_bytes().startswith(b'{"canonical":true,"videos":')
    assert open_store(store).version == version


def converted(tmp_path: Path) -> Path:
    """The old checkpoint (format 1: numpy RNG state, which the safe loader refuses) through the converter."""
    with pytest.raises(checkpoint.CheckpointError, match="convert-checkpoint"):
        checkpoint.load(FIXTURES / "old_pretrain.pt")
    checkpoint.convert(FIXTURES / "old_pretrain.pt", tmp_path / "converted.pt", trust=True)
    return tmp_path / "converted.pt"


def test_an_old_checkpoint_loads_for_evaluation_and_resume(tmp_path):
    path = converted(tmp_path)
    payload = checkpoint.load(path)
    want = EXPECTED["checkpoint"]
    assert sorted(payload) == want["keys"] and payload["step"] == want["step"]
    backbone, _, report = load_backbone(path)
    assert not report.missing
    x = torch.linspace(-1, 1, 3 * 2 * 16 * 16).reshape(1, 3, 2, 16, 16)
    np.testing.assert_allclose(backbone.eval()(x)[0].detach().numpy(), want["output"], rtol=1e-5, atol=1e-6)
    cfg = config_from_dict(payload["config"], source=str(path))
    assert (cfg.method, cfg.backbone, cfg.steps, payload["step"]) == ("rgb-moco", want["backbone"], 2, 1)


def test_an_old_run_resumes_with_todays_trainer(tmp_path):
    """The old run halted after step 1 of 2; its checkpoint (optimiser, RNG and all) finishes under today's loop."""
    from motionssl.train.loop import train

    store = tmp_path / "store.zarr"
    shutil.copytree(FIXTURES / "old_store.zarr", store)
    path = converted(tmp_path)
    payload = checkpoint.load(path)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(path, run / "checkpoint.pt")
    values = {**payload["config"], "store": str(store), "out": str(run), "halt_after": None}
    summary = train(config_from_dict(values, source="old run"), resume=str(run / "checkpoint.pt"))
    assert summary["finished"] and summary["steps"] == 2
