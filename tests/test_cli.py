"""The command line's one option set: shared options declared once (defaults from PretrainConfig), closed choices
that typer lists and validates, the store as the first argument, `-o` for every output file."""
import inspect
from dataclasses import fields

import cv2
import pytest
from typer.testing import CliRunner

from motionssl.cli import RUN_OPTIONS, app, finetune, pretrain
from motionssl.train.config import BACKBONE_NAMES, METHOD_NAMES, PretrainConfig


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_pretrain_and_finetune_share_one_declaration_of_config_fields():
    config = {f.name for f in fields(PretrainConfig)}
    assert set(RUN_OPTIONS) <= config
    for command in (pretrain, finetune):
        params = inspect.signature(command).parameters
        assert set(RUN_OPTIONS) <= set(params)
        assert all(params[name].default is RUN_OPTIONS[name][1] for name in RUN_OPTIONS)  # the same objects
        assert list(params)[0] == "store"
    for name in ("workers", "seed", "log_every", "save_every", "precision"):  # the help quotes the config's default
        assert f"default {getattr(PretrainConfig, name)}" in RUN_OPTIONS[name][1].help


@pytest.mark.parametrize("args, listed", [
    (["pretrain", "s", "-o", "r", "--method", "simclr"], METHOD_NAMES),
    (["pretrain", "s", "-o", "r", "--backbone", "resnet9000"], BACKBONE_NAMES),
    (["pretrain", "s", "-o", "r", "--precision", "fp8"], ("auto", "bf16", "fp16", "fp32")),
    (["finetune", "s", "-o", "r", "--precision", "fp8"], ("auto", "bf16", "fp16", "fp32")),
    (["extract", "v", "-o", "s", "--format", "parquet"], ("zarr", "hdf5")),
    (["evaluate", "classify", "s", "--checkpoint", "c", "-o", "o", "--crops", "5"], ("1", "3", "10")),
])
def test_closed_choices_are_validated_and_listed(args, listed):
    r = run(*args)
    assert r.exit_code == 2 and "Invalid value" in r.output
    assert all(name in r.output for name in listed), r.output


def test_store_is_the_first_argument_and_plain_options_are_gone():
    for command in ("pretrain", "finetune", "evaluate retrieve", "evaluate classify", "evaluate motion", "show",
                    "info", "verify", "dump"):
        usage = run(*command.split(), "--help").output
        assert "--store " not in usage, command
        assert usage.split("[OPTIONS]")[1].split()[0].strip("[]{}").lower() == "store", (command, usage[:300])


def test_show_writes_every_o_file_and_takes_frames(tiny_stores, tmp_path):
    png, mp4 = tmp_path / "p.png", tmp_path / "p.mp4"
    r = run("show", tiny_stores["zarr"], "right", "-o", png, "-o", mp4, "--frames", "1,20")
    assert r.exit_code == 0, r.output
    assert cv2.imread(str(png)) is not None and mp4.stat().st_size > 0
    one = cv2.imread(str(png))
    r = run("show", tiny_stores["zarr"], "right", "-o", tmp_path / "q.png", "--frames", "1,20,30")
    assert cv2.imread(str(tmp_path / "q.png")).shape[0] > one.shape[0]  # one more row
    r = run("show", tiny_stores["zarr"], "right", "-o", tmp_path / "p.gif")
    assert r.exit_code == 2 and "-o takes .png" in r.output
    r = run("show", tiny_stores["zarr"], "right", "-o", png, "--frames", "a,b")
    assert r.exit_code == 2 and "--frames must be comma-separated integers" in r.output
