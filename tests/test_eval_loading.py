"""Strict, key-mapped checkpoint loading, and the linear probe's frozen backbone."""
import pytest
import torch

from motionssl.train.features import load_backbone, load_mapped, map_keys
from motionssl.train.finetune import Finetune, load_classifier
from motionssl.train import checkpoint
from motionssl.train.backbones import BACKBONES
from motionssl.train.checkpoint import CheckpointError
from motionssl.train.config import PretrainConfig
from motionssl.train.optim import make_optimizer, param_groups

KWARGS = {"in_channels": 3, "width": 4}


def tiny_checkpoint(path, state=None, name="r3d10"):
    torch.manual_seed(0)
    backbone = BACKBONES[name](**KWARGS)
    state = backbone.state_dict() if state is None else state
    checkpoint.save(path, {"config": {"method": "rgb-moco", "clip_len": 4, "stride": 2, "size": 32},
                           "backbone": {"name": name, "kwargs": KWARGS, "state_dict": state}})
    return backbone


def test_map_keys_longest_prefix_wins():
    state = {"model.backbone.a": 1, "model.head.w": 2, "queue.keys": 3}
    renamed, unmatched = map_keys(state, {"model.": "", "model.head.": "classifier."})
    assert renamed == {"backbone.a": 1, "classifier.w": 2} and unmatched == ["queue.keys"]


def test_load_backbone_round_trip(tmp_path):
    saved = tiny_checkpoint(tmp_path / "c.pt")
    loaded, payload, report = load_backbone(tmp_path / "c.pt")
    assert report.missing == [] and len(report.loaded) == len(saved.state_dict())
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in saved.state_dict().items())
    assert payload["backbone"]["name"] == "r3d10"


def test_unexpected_missing_and_misshapen_keys_fail(tmp_path):
    state = BACKBONES["r3d10"](**KWARGS).state_dict()
    tiny_checkpoint(tmp_path / "extra.pt", {**state, "head.weight": torch.zeros(2), "fc.bias": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"2 unexpected key\(s\) for VideoResNet .*head.weight, fc.bias"):
        load_backbone(tmp_path / "extra.pt")
    tiny_checkpoint(tmp_path / "short.pt", {k: v for k, v in state.items() if not k.startswith("layer4.")})
    with pytest.raises(CheckpointError, match=r"the backbone lacks \d+ key\(s\): layer4\.0\."):
        load_backbone(tmp_path / "short.pt")
    tiny_checkpoint(tmp_path / "wide.pt", BACKBONES["r3d10"](in_channels=3, width=8).state_dict())
    with pytest.raises(CheckpointError, match=r"shape mismatch .*stem.0.weight \(8, 3, 3, 7, 7\) vs \(4, 3, 3, 7, 7\)"):
        load_backbone(tmp_path / "wide.pt")


def test_failed_load_changes_nothing_and_missing_keys_are_reported():
    target = BACKBONES["r3d10"](**KWARGS)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    other = BACKBONES["r3d10"](**KWARGS).state_dict()
    with pytest.raises(CheckpointError):
        load_mapped(target, {**other, "extra": torch.zeros(1)}, key_map={"": ""}, source="test")
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())
    report = load_mapped(target, {"stem.0.weight": other["stem.0.weight"]}, key_map={"": ""}, source="test")
    assert report.loaded == ["stem.0.weight"] and len(report.missing) == len(before) - 1
    assert torch.equal(target.state_dict()["stem.0.weight"], other["stem.0.weight"])


def finetune_cfg(ckpt, **options) -> PretrainConfig:
    return PretrainConfig(method="finetune", store="unused", out="unused", clip_len=4, stride=2, size=32,
                          batch_size=4, steps=3, optimizer="sgd", lr=0.5, weight_decay=1e-3,
                          method_options={"checkpoint": str(ckpt), **options})


def run_steps(method: Finetune, steps: int = 3) -> None:
    optimizer = make_optimizer(param_groups(method, 1e-3), name="sgd", lr=0.5)
    method.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        clips = torch.randn(4, 3, 4, 32, 32, generator=g) * 3 + 1
        batch = {"views": [{"rgb": clips}], "label": torch.tensor([0, 1, 2, 0])}
        loss = method(batch, step=0)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_linear_probe_leaves_the_backbone_and_its_batchnorm_statistics_unchanged(tmp_path):
    tiny_checkpoint(tmp_path / "c.pt")
    probe = Finetune(finetune_cfg(tmp_path / "c.pt", linear_probe=True), total_steps=3, num_classes=3)
    before = {k: v.clone() for k, v in probe.model.backbone.state_dict().items()}
    head_before = probe.model.head.weight.detach().clone()
    run_steps(probe)
    assert probe.training and not probe.model.backbone.training
    assert not any(m.training for m in probe.model.backbone.modules())
    after = probe.model.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # weights, running_mean/var, batches tracked
    assert not torch.equal(head_before, probe.model.head.weight)
    # the same steps fine-tuning everything move weights and BatchNorm statistics alike
    full = Finetune(finetune_cfg(tmp_path / "c.pt"), total_steps=3, num_classes=3)
    run_steps(full)
    moved = full.model.backbone.state_dict()
    assert not torch.equal(before["stem.1.running_mean"], moved["stem.1.running_mean"])
    assert not torch.equal(before["layer1.0.conv1.0.weight"], moved["layer1.0.conv1.0.weight"])


def test_from_scratch_takes_the_architecture_not_the_weights(tmp_path):
    saved = tiny_checkpoint(tmp_path / "c.pt")
    torch.manual_seed(1)
    scratch = Finetune(finetune_cfg(tmp_path / "c.pt", from_scratch=True), total_steps=1, num_classes=3)
    assert scratch.backbone_spec == {"name": "r3d10", "kwargs": KWARGS}
    assert not torch.equal(scratch.model.backbone.state_dict()["stem.0.weight"], saved.state_dict()["stem.0.weight"])


def test_classify_needs_a_finetune_checkpoint(tmp_path):
    tiny_checkpoint(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="is not a finetune checkpoint"):
        load_classifier(tmp_path / "c.pt")
