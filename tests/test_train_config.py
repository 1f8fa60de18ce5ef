"""The pretrain config layers, the learning-rate schedule, and checkpoint files."""
import math
import random

import numpy as np

import pytest
import torch

from motionssl.train import checkpoint
from motionssl.train.config import ConfigError, PretrainConfig, config_from_dict, load_yaml, resolve
from motionssl.train.optim import lr_at, param_groups, schedule_segment

METHOD_DEFAULTS = {"backbone": "s3d", "clip_len": 16, "lr": 1e-4, "epochs": 300, "method_options": {"tau": 0.07, "dim": 128}}


def test_layers_override_in_order(tmp_path):
    yaml_values = {"clip_len": 8, "lr": 0.5, "method_options": {"tau": 0.2}}
    cli = {"store": "s", "out": "o", "lr": 0.1, "clip_len": None, "method_options": {"dim": 16}}
    cfg = resolve(METHOD_DEFAULTS, yaml_values, cli)
    assert (cfg.backbone, cfg.clip_len, cfg.lr, cfg.epochs) == ("s3d", 8, 0.1, 300)
    assert cfg.method_options == {"tau": 0.2, "dim": 16}  # merged key by key


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key.*clip_length"):
        config_from_dict({"clip_length": 3}, source="x.yaml")
    with pytest.raises(ConfigError, match="no store given: pass STORE"):
        resolve({}, {}, {"out": "o", "steps": 1})
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        resolve({}, {}, {"store": "s", "out": "o", "steps": 1, "batch_size": 0})
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


def test_lr_schedule_closed_form():
    kw = dict(base_lr=1.0, warmup_steps=4, total_steps=24, min_lr=0.1)
    assert [lr_at(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, **kw) == pytest.approx(1.0)
    assert lr_at(14, **kw) == pytest.approx(0.1 + 0.9 * 0.5)          # half way through the cosine
    assert lr_at(9, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_at(24, **kw) == lr_at(99, **kw) == 0.1
    values = [lr_at(s, **kw) for s in range(4, 24)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_at(0, base_lr=2.0, warmup_steps=0, total_steps=10) == 2.0


def test_schedule_segments_cut_the_run_at_its_restarts():
    assert [schedule_segment(s, (), 10) for s in (0, 9, 10)] == [(0, 10)] * 3
    assert [schedule_segment(s, (6,), 10) for s in (0, 5, 6, 9)] == [(0, 6), (0, 6), (6, 10), (6, 10)]
    assert schedule_segment(3, (0, 10, 4, 2), 10) == (2, 4)  # restarts outside (0, total) are no cuts; any order


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.BatchNorm3d(4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert sorted(p.shape for p in decay["params"]) == sorted([model[0].weight.shape, model[2].weight.shape])
    assert len(no_decay["params"]) == 4  # conv bias, bn weight and bias, linear bias
    decay, no_decay = param_groups(model, 0.1, decay_biases_and_norms=True)
    assert len(decay["params"]) == 6 and not no_decay["params"]


def test_checkpoint_save_is_atomic_and_load_checks(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"step": 3, "w": torch.arange(4)})
    assert checkpoint.load(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left behind
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.raises(checkpoint.CheckpointError, match="damaged"):
        checkpoint.load(path)
    path.write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match="empty"):
        checkpoint.load(path)
    torch.save({"model": 1}, path)
    with pytest.raises(checkpoint.CheckpointError, match="not a motionssl checkpoint"):
        checkpoint.load(path)
    assert checkpoint.find_resume(tmp_path / "fresh", "auto") is None
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint"):
        checkpoint.find_resume(tmp_path, str(tmp_path / "nope.pt"))


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    a = (torch.rand(3), np.random.rand(), random.random())
    checkpoint.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_config_dataclass_round_trips_through_dict():
    cfg = PretrainConfig(store="s", out="o", steps=3, method_options={"tau": 0.1})
    assert config_from_dict(cfg.to_dict(), source="x") == cfg


def test_no_flip_reaches_every_method_dataset(motion_store, tmp_path):
    """`flip: false` (--no-flip) leaves every training view of every method unflipped; the default flips half."""
    from motionssl.stores import open_store
    from motionssl.train.methods import METHODS

    store = open_store(motion_store)
    for name, method in METHODS.items():
        for flip, expected in ((True, 0.5), (False, 0.0)):
            cfg = resolve(method.defaults, {}, {"method": name, "store": str(motion_store), "out": str(tmp_path),
                                                "steps": 1, "flip": flip, "clip_len": 4, "stride": 1, "size": 32})
            assert method.dataset(cfg, store).flip_p == expected, name


def test_a_run_saved_before_a_config_key_existed_resumes(tmp_path):
    from motionssl.train.loop import check_resume_config

    cfg = resolve({}, {}, {"store": "s", "out": str(tmp_path), "steps": 2})
    old = {k: v for k, v in cfg.to_dict().items() if k != "flip"}
    check_resume_config(old, cfg)  # the default it would have had
    with pytest.raises(ConfigError, match="flip"):
        check_resume_config(old, resolve({}, {}, {"store": "s", "out": str(tmp_path), "steps": 2, "flip": False}))
    cfg.method_options = {"tau": 0.2, "bn_groups": 8}
    check_resume_config({**cfg.to_dict(), "method_options": {"tau": 0.2}}, cfg)  # an option added since
    with pytest.raises(ConfigError, match="method_options"):
        check_resume_config({**cfg.to_dict(), "method_options": {"tau": 0.1}}, cfg)


def test_the_named_choices_are_the_registries():
    from motionssl.train.backbones import BACKBONES
    from motionssl.train.config import BACKBONE_NAMES, METHOD_NAMES
    from motionssl.train.methods import METHODS

    assert METHOD_NAMES == tuple(METHODS) and BACKBONE_NAMES == tuple(BACKBONES)


def test_upsampled_crops_are_named():
    from motionssl.train.loop import upsampling_note

    assert upsampling_note(112, 128) is None and upsampling_note(192, 128) is None  # at most 1.5x
    note = upsampling_note(224, 128)  # MCL's 224 px from a 128 px store
    assert note.startswith("warning:") and "1.75x" in note and "\n" not in note
