"""The `motionssl` command line."""
from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from motionssl.data_specs import ALWAYS_STORED, ARRAYS

app = typer.Typer(
    help="Extract motion signals from videos once, into chunked Zarr/HDF5 stores; pretrain and evaluate on them.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


class Format(str, Enum):
    zarr = "zarr"
    hdf5 = "hdf5"


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _open(store: Path):
    from motionssl.stores import StoreError, open_store

    try:
        return open_store(store)
    except StoreError as e:
        fail(str(e))


@app.command()
def extract(
    video_dir: Path = typer.Argument(..., help="Directory scanned recursively for videos."),
    output: Path = typer.Option(..., "-o", "--output", help="Store directory to create or resume."),
    spec: str = typer.Option("default", help="Spec name (default, compressed) or path to a YAML spec."),
    format: Format = typer.Option(Format.zarr, "--format", help="Store backend."),
    workers: Optional[int] = typer.Option(None, min=1, help="Worker processes of the local cluster (default: all cores)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing Dask scheduler, e.g. tcp://host:8786."),
    report: Optional[Path] = typer.Option(None, help="JSON report path (default: STORE.report.json beside the store)."),
    overwrite: bool = typer.Option(False, help="Redo videos that are already complete."),
    timeout: float = typer.Option(300.0, min=1.0, help="Fail a video whose decoder makes no progress for this "
                                                       "many seconds (a hang); slow videos that progress are never cut."),
    reencode: bool = typer.Option(False, help="Re-encode each video to MPEG-4 (GOP 12, no B-frames) first, "
                                              "so codecs without motion-vector export still give motion vectors."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Decode every video once and write its modalities (RGB, I-frames, motion vectors) into a store.

    Exit status: 0 when every video is ok or skipped, 3 when some failed (see the report),
    2 for errors found before any work started.
    """
    from motionssl.data_specs import SpecError, load_spec
    from motionssl.preprocess.extract import ExtractOptions, FatalError, run_extract

    try:
        opts = ExtractOptions(
            video_dir=video_dir, store=output, spec=load_spec(spec), fmt=format.value, workers=workers,
            scheduler=scheduler, report=report, overwrite=overwrite, timeout=timeout, reencode=reencode,
            progress=progress,
        )
        code = run_extract(opts)
    except (SpecError, FatalError) as e:
        fail(str(e))
    raise typer.Exit(code)


@app.command()
def info(
    store: Path = typer.Argument(..., help="Store directory."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
):
    """Show a store's spec, videos, modalities (shapes, dtypes) and sizes."""
    from motionssl.stores.summary import summarize

    s = _open(store)
    summary = summarize(s)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    typer.echo(f"store   {s.path}  ({s.format}, spec {s.spec.name} {s.spec.digest}, motionssl {s.root_meta['motionssl_version']})")
    typer.echo(f"spec    modalities {', '.join(s.spec.modalities)}; short side {s.spec.resolution.short_side}px; "
               f"mv cell {s.spec.mv.cell}px")
    t = summary["totals"]
    typer.echo(f"videos  {t['videos']}, {t['frames']} frames, {t['bytes'] / 1e6:.1f} MB on disk "
               f"({t['bytes_per_frame']:.0f} B/frame)")
    if summary["videos"]:
        first = summary["videos"][0]
        typer.echo(f"arrays  (shapes of {first['id']}; T = its frames; MB over all videos)")
        for name, a in sorted(first["arrays"].items()):
            shape = "(T" + "".join(f", {d}" for d in a["shape"][1:]) + ")"
            typer.echo(f"  {name:13s} {a['dtype']:8s} {shape:22s} {summary['array_bytes'].get(name, 0) / 1e6:9.2f} MB")
        typer.echo(f"  {'id':40s} {'frames':>7s} {'codec':>8s} {'size':>10s} {'I':>4s}  notes")
        for v in summary["videos"][:50]:
            typer.echo(f"  {v['id'][:40]:40s} {v['frames']:7d} {v['codec']:>8s} {v['width']:>5d}x{v['height']:<4d} "
                       f"{v['iframes']:4d}  {'; '.join(v['notes'])}")
        if len(summary["videos"]) > 50:
            typer.echo(f"  ... {len(summary['videos']) - 50} more (use --json)")


@app.command()
def verify(store: Path = typer.Argument(..., help="Store directory.")):
    """Exit 0 only if every video is complete and consistent with the spec; name every broken entry."""
    from motionssl.stores.verify import verify_store

    s = _open(store)
    problems = verify_store(s)
    for p in problems:
        typer.echo(p)
    if problems:
        typer.echo(f"verify: {len(problems)} problem(s) in {store}", err=True)
        raise typer.Exit(1)
    typer.echo(f"verify: {len(s.videos)} videos complete and consistent with spec {s.spec.name}")


DUMPABLE = tuple(a for arrays in ARRAYS.values() for a in arrays) + ALWAYS_STORED


@app.command()
def dump(
    store: Path = typer.Argument(..., help="Store directory."),
    video_id: str = typer.Argument(..., help="Video id, as `motionssl info` lists it."),
    modality: str = typer.Argument(..., help=f"One of: {', '.join(DUMPABLE)}."),
    output: Path = typer.Option(..., "-o", "--output", help="Output .npy file."),
):
    """Write one modality of one video as a NumPy array, in the conventions of data_specs/README.md."""
    import numpy as np

    s = _open(store)
    if modality not in DUMPABLE:
        fail(f"unknown modality {modality!r}; choose one of {', '.join(DUMPABLE)}")
    if video_id not in s:
        fail(f"video {video_id!r} is not in {store}; `motionssl info {store}` lists the ids")
    if modality not in s.arrays(video_id):
        fail(f"{video_id} has no {modality!r}: the store's spec {s.spec.name!r} does not include it")
    arr = s.read(video_id, modality)
    np.save(output, arr)
    typer.echo(f"wrote {output}: {arr.dtype} {tuple(arr.shape)}")


@app.command()
def show(
    store: Path = typer.Argument(..., help="Store directory."),
    video_id: str = typer.Argument(..., help="Video id, as `motionssl info` lists it."),
    output: Path = typer.Option(..., "-o", "--output", help="Panel image (.png)."),
    video: Optional[Path] = typer.Option(None, "--video", help="Also write an animated version (.mp4)."),
    steps: Optional[str] = typer.Option(None, help="Comma-separated frame indices, e.g. 1,20,40 (default: evenly spaced)."),
    count: int = typer.Option(4, min=1, help="Rows when --steps is not given."),
    max_motion: Optional[float] = typer.Option(None, help="Motion (px/frame) at full colour saturation "
                                                           "(default: 95th percentile of what is shown)."),
):
    """Draw a motion panel: one row per time step; RGB | motion vectors | flow | motion map | flow edges."""
    from motionssl.show import render_panel, write_png, write_video

    s = _open(store)
    try:
        chosen = [int(x) for x in steps.split(",")] if steps else None
    except ValueError:
        fail(f"--steps must be comma-separated integers, got {steps!r}")
    try:
        image = render_panel(s, video_id, steps=chosen, count=count, max_motion=max_motion)
        write_png(image, output)
        typer.echo(f"wrote {output} ({image.shape[1]}x{image.shape[0]})")
        if video is not None:
            n = write_video(s, video_id, video, max_motion=max_motion)
            typer.echo(f"wrote {video} ({n} frames)")
    except ValueError as e:
        fail(str(e))


def _not_built(what: str, issue: str):
    def command(ctx: typer.Context):
        fail(f"`motionssl {what}` is not built yet ({issue}).", code=1)
    command.__doc__ = f"[not built yet: {issue}]"
    return command


@app.command()
def pretrain(
    method: Optional[str] = typer.Option(None, help="Method: rgb-moco (default). Paper settings are its defaults."),
    store: Optional[Path] = typer.Option(None, help="Store made by `motionssl extract`."),
    output: Path = typer.Option(..., "-o", "--output", help="Run directory: config, checkpoints, logs."),
    backbone: Optional[str] = typer.Option(None, help="r3d18, r2plus1d18, r3d10, r2d10, s3d or c3d."),
    backbone_width: Optional[int] = typer.Option(None, min=1, help="Base channels (64 = full size); tiny for tests."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Epochs (one clip pair per video per epoch)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Optimiser steps; overrides --epochs."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Clips per process per step."),
    clip_len: Optional[int] = typer.Option(None, min=1, help="Frames per clip."),
    stride: Optional[int] = typer.Option(None, min=1, help="Frame stride within a clip."),
    size: Optional[int] = typer.Option(None, min=8, help="Crop side in pixels."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    workers: Optional[int] = typer.Option(None, min=0, help="DataLoader workers per process."),
    seed: Optional[int] = typer.Option(None, help="Seed of initialisation, sampling and augmentation."),
    precision: Optional[str] = typer.Option(None, help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32."),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic",
                                                 help="Deterministic algorithms (exact resume on CPU)."),
    option: list[str] = typer.Option([], "--option", help="A method option as KEY=VALUE (YAML value), repeatable, "
                                     "e.g. --option tau=0.1 --option queue_size=16384."),
    config: Optional[Path] = typer.Option(None, help="YAML config; CLI options override it."),
    resume: Optional[str] = typer.Option(None, help="auto (continue RUN_DIR if it has a checkpoint) or a checkpoint path."),
    halt_after: Optional[int] = typer.Option(None, min=1, help="Stop after this many steps in this invocation "
                                             "(for time-limited jobs); continue with --resume auto."),
    log_every: Optional[int] = typer.Option(None, min=1, help="Steps between log rows."),
    save_every: Optional[int] = typer.Option(None, min=1, help="Steps between checkpoints."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Show a progress bar."),
):
    """Pretrain a method on a store, on one device or many (launch with torchrun for DDP)."""
    import yaml

    from motionssl.stores import StoreError
    from motionssl.train.checkpoint import CheckpointError
    from motionssl.train.config import ConfigError, load_yaml, resolve
    from motionssl.train.datasets import MissingModality
    from motionssl.train.loop import train
    from motionssl.train.methods import METHODS

    try:
        saved = output / "config.yaml"
        yaml_values = load_yaml(config) if config else (load_yaml(saved) if resume and saved.exists() else {})
        options = {}
        for item in option:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--option {item!r}: write KEY=VALUE")
            options[key] = yaml.safe_load(value)
        name = method or yaml_values.get("method") or "rgb-moco"
        if name not in METHODS:
            raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
        cli_values = {"method": name, "store": str(store) if store else None, "out": str(output),
                      "backbone": backbone, "backbone_width": backbone_width, "epochs": epochs, "steps": steps,
                      "batch_size": batch_size, "clip_len": clip_len, "stride": stride, "size": size, "lr": lr,
                      "workers": workers, "seed": seed, "precision": precision, "deterministic": deterministic,
                      "halt_after": halt_after, "log_every": log_every, "save_every": save_every, "progress": progress,
                      "method_options": options}
        cfg = resolve(METHODS[name].defaults, yaml_values, cli_values, source=str(config or "command line"))
        summary = train(cfg, resume=resume)
    except (ConfigError, StoreError, MissingModality, CheckpointError) as e:
        fail(str(e))
    if summary is not None and os.environ.get("RANK", "0") == "0":
        state = "finished" if summary["finished"] else f"halted at step {summary['steps']} of {summary['total_steps']}"
        typer.echo(f"pretrain: {state}; run directory {summary['run_dir']} (checkpoint.pt, log.csv, tensorboard/)")


for _name, _issue in (
    ("finetune", "evaluation issue: linear probe and full fine-tuning"),
    ("evaluate", "evaluation issue: classification with multi-clip testing, retrieval R@k"),
):
    app.command(_name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        _not_built(_name, _issue))


def main() -> None:  # python -m motionssl
    app()


if __name__ == "__main__":
    sys.exit(main())
