"""The `motionssl` command line."""
from __future__ import annotations

import atexit
import functools
import gc
import inspect
import json
import os
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from motionssl.data_specs import ALWAYS_STORED, ARRAYS
from motionssl.train.config import BACKBONE_NAMES, METHOD_NAMES, PRECISIONS, PretrainConfig

app = typer.Typer(
    help="Extract motion signals from videos once, into chunked Zarr/HDF5 stores; pretrain and evaluate on them.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


def _version(show: bool) -> None:
    if show:
        from motionssl import __version__

        typer.echo(f"motionssl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Extract motion signals from videos once, into chunked Zarr/HDF5 stores; pretrain and evaluate on them."""


class Format(str, Enum):
    zarr = "zarr"
    hdf5 = "hdf5"


# Closed choices: typer lists them in --help and refuses anything else.
Method = Enum("Method", {name: name for name in METHOD_NAMES}, type=str)
Backbone = Enum("Backbone", {name: name for name in BACKBONE_NAMES}, type=str)
Precision = Enum("Precision", {name: name for name in PRECISIONS}, type=str)


class Crops(str, Enum):
    one = "1"
    three = "3"
    ten = "10"


class Network(str, Enum):
    v = "v"
    i = "i"
    m = "m"


class Classifier(str, Enum):
    softmax = "softmax"
    svm = "svm"


class Stream(str, Enum):
    rgb = "rgb"
    mv = "mv"
    both = "both"


def _default(name: str) -> str:
    """`PretrainConfig`'s default for field `name`, for the help text (the config is the one source)."""
    field = next(f for f in fields(PretrainConfig) if f.name == name)
    return f"default {field.default}"


STORE = "Store made by `motionssl extract`: a directory, or a URL such as s3://bucket/prefix/x.zarr"
STORE_HELP = f"{STORE} (set MOTIONSSL_CACHE_DIR to keep the shards read from a URL on this machine's disk)."
ALLOW_STORE_CHANGE = typer.Option(False, "--allow-store-change", help="With --resume: continue even though the "
                                  "store's version (`motionssl info`) differs from the one the run was trained on.")
# The options `pretrain` and `finetune` share, declared once: each is the PretrainConfig field of its name. None means
# "not given": then the YAML config (--config), the method's paper setting or the dataclass default applies
# (train/config.py); the help names the default where it is the dataclass's.
RUN_OPTIONS = {
    "backbone": (Optional[Backbone], typer.Option(None, help="Architecture (default: the method's).")),
    "backbone_width": (Optional[int], typer.Option(None, min=1, help="Base channels (64 = full size); tiny for "
                                                                     "tests.")),
    "epochs": (Optional[int], typer.Option(None, min=1, help="Epochs over the videos (default: the method's).")),
    "steps": (Optional[int], typer.Option(None, min=1, help="Optimiser steps; overrides --epochs.")),
    "batch_size": (Optional[int], typer.Option(None, min=1, help="Clips per process per step.")),
    "clip_len": (Optional[int], typer.Option(None, min=1, help="Frames per clip.")),
    "stride": (Optional[int], typer.Option(None, min=1, help="Frame stride within a clip.")),
    "size": (Optional[int], typer.Option(None, min=8, help="Crop side in pixels.")),
    "flip": (Optional[bool], typer.Option(None, "--flip/--no-flip", help="Horizontal flips in training views (on); "
                                                                         "--no-flip for direction-sensitive data: a "
                                                                         "flip turns leftward motion rightward.")),
    "lr": (Optional[float], typer.Option(None, help="Peak learning rate (cosine schedule).")),
    "workers": (Optional[int], typer.Option(None, min=0, help=f"DataLoader workers per process ({_default('workers')}).")),
    "seed": (Optional[int], typer.Option(None, help=f"Seed of initialisation, sampling and augmentation "
                                                    f"({_default('seed')}).")),
    "precision": (Optional[Precision], typer.Option(None, help=f"auto: bf16 on CUDA, fp32 on CPU "
                                                               f"({_default('precision')}).")),
    "deterministic": (Optional[bool], typer.Option(None, "--deterministic/--no-deterministic",
                                                   help="Deterministic algorithms (exact resume on CPU).")),
    "halt_after": (Optional[int], typer.Option(None, min=1, help="Stop after this many steps in this invocation "
                                                                 "(time-limited jobs); continue with --resume auto.")),
    "log_every": (Optional[int], typer.Option(None, min=1, help=f"Steps between log rows ({_default('log_every')}).")),
    "save_every": (Optional[int], typer.Option(None, min=1, help=f"Steps between checkpoints "
                                                                 f"({_default('save_every')}).")),
    "progress": (Optional[bool], typer.Option(None, "--progress/--no-progress", help="Show a progress bar.")),
}


def run_options(command):
    """Give `command` the RUN_OPTIONS, after its own parameters; it receives them as keyword arguments `**run`."""
    own = [p for p in inspect.signature(command).parameters.values() if p.kind is not p.VAR_KEYWORD]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
              for name, (annotation, option) in RUN_OPTIONS.items()]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        return command(*args, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + shared)
    wrapper.__annotations__ = {**command.__annotations__, **{n: a for n, (a, _) in RUN_OPTIONS.items()}}
    return wrapper


def _config_values(store: Optional[str], output: Path, run: dict, **more) -> dict:
    """The CLI layer of the config (train/config.py `resolve`): every given value under its field's name."""
    values = {name: (v.value if isinstance(v, Enum) else v) for name, v in run.items()}
    return {"store": str(store) if store else None, "out": str(output), **values, **more}


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _location(store: str) -> Path | str:
    """A store argument: a URL (s3://, gs://) as given, anything else a local path."""
    from motionssl.stores.remote import is_url

    return store if is_url(store) else Path(store)


def _open(store: str):
    from motionssl.stores import StoreError, open_store

    try:
        return open_store(_location(store))
    except StoreError as e:
        fail(str(e))


@app.command()
def extract(
    video_dir: Path = typer.Argument(..., help="Directory scanned recursively for videos."),
    output: str = typer.Option(..., "-o", "--output", help="Store directory to create or resume, or a URL on object "
                               "storage (s3://bucket/prefix/x.zarr; Zarr only)."),
    spec: str = typer.Option("default", help="Spec name (default, compressed) or path to a YAML spec."),
    format: Format = typer.Option(Format.zarr, "--format", help="Store backend."),
    workers: Optional[int] = typer.Option(None, min=1, help="Worker processes of the local cluster (default: all cores)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing Dask scheduler, e.g. tcp://host:8786."),
    report: Optional[Path] = typer.Option(None, help="JSON report path (default: STORE.report.json beside the store; "
                                          "in the current directory for a URL)."),
    overwrite: bool = typer.Option(False, help="Redo videos that are already complete."),
    timeout: float = typer.Option(300.0, min=1.0, help="Fail a video whose decoder makes no progress for this "
                                                       "many seconds (a hang); slow videos that progress are never cut."),
    reencode: bool = typer.Option(False, help="Re-encode each video to MPEG-4 (GOP 12, no B-frames) first, "
                                              "so codecs without motion-vector export still give motion vectors."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    start_timeout: Optional[float] = typer.Option(None, min=0.001, help="Seconds for the local Dask cluster to start "
                                                  "(default 60 + 1 per worker); tried again with twice that."),
    keep_partial: bool = typer.Option(False, "--keep-partial", help="Keep the good frames of a video that a decode "
                                      "error or a cut ends early, marked partial (default: it fails)."),
):
    """Decode every video once and write its modalities (RGB, I-frames, motion vectors) into a store.

    Exit status: 0 when every video is ok or skipped, 3 when some failed (see the report),
    2 for errors found before any work started.
    """
    from motionssl.data_specs import SpecError, load_spec
    from motionssl.preprocess.extract import ExtractOptions, FatalError, run_extract

    # At exit, after every exit handler: no last garbage collections over the whole heap (Dask's, numpy's, ...),
    # which the OS frees anyway (benchmarks/README.md, "Round four").
    atexit.register(gc.freeze)
    try:
        opts = ExtractOptions(
            video_dir=video_dir, store=_location(output), spec=load_spec(spec), fmt=format.value, workers=workers,
            scheduler=scheduler, report=report, overwrite=overwrite, timeout=timeout, reencode=reencode,
            progress=progress, start_timeout=start_timeout, keep_partial=keep_partial,
        )
        code = run_extract(opts)
    except (SpecError, FatalError) as e:
        fail(str(e))
    except OSError as e:  # mid-run, e.g. the disk filled while writing the index: finished videos are kept
        fail(f"{e.strerror or e} ({e.filename or output}); the videos finished so far are kept: fix this and rerun "
             f"the same command", 1)
    raise typer.Exit(code)


@app.command()
def info(
    store: str = typer.Argument(..., help=STORE_HELP),
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
    typer.echo(f"version {summary['version']}  (a digest of the index; runs record it)")
    typer.echo(f"spec    modalities {', '.join(s.spec.modalities)}; short side {s.spec.resolution.short_side}px; "
               f"mv cell {s.spec.mv.cell}px")
    t = summary["totals"]
    typer.echo(f"videos  {t['videos']}, {t['frames']} frames, {t['bytes'] / 1e6:.1f} MB on disk "
               f"({t['bytes_per_frame']:.0f} B/frame)" + (f"; {t['partial']} partial" if t["partial"] else ""))
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
def verify(store: str = typer.Argument(..., help=f"{STORE} (read from the bucket itself, never "
                                                  "MOTIONSSL_CACHE_DIR).")):
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
    store: str = typer.Argument(..., help=STORE_HELP),
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
    from motionssl.stores import StoreError

    try:
        arr = s.read(video_id, modality)
    except StoreError as e:  # damaged data: one line naming video and array
        fail(str(e))
    np.save(output, arr)
    typer.echo(f"wrote {output}: {arr.dtype} {tuple(arr.shape)}")


@app.command()
def show(
    store: str = typer.Argument(..., help=STORE_HELP),
    video_id: str = typer.Argument(..., help="Video id, as `motionssl info` lists it."),
    output: list[Path] = typer.Option(..., "-o", "--output", help="Output file, repeatable: .png the panel, .mp4 "
                                      "an animated version of it."),
    frames: Optional[str] = typer.Option(None, help="Comma-separated frame indices, e.g. 1,20,40 (default: evenly "
                                         "spaced)."),
    count: int = typer.Option(4, min=1, help="Rows when --frames is not given."),
    max_motion: Optional[float] = typer.Option(None, help="Motion (px/frame) at full colour saturation "
                                                           "(default: 95th percentile of what is shown)."),
    checkpoint: Optional[Path] = typer.Option(None, help="A `pretrain --method cgm` checkpoint.pt: adds a column of "
                                              "its learned motion maps (each filter's displacement centroid)."),
):
    """Draw a motion panel: one row per time step; RGB | motion vectors | flow | motion map | flow edges."""
    from motionssl.pictures import write_png
    from motionssl.pictures.frames import render_panel, write_video
    from motionssl.stores import StoreError

    unknown = [str(p) for p in output if p.suffix.lower() not in (".png", ".mp4")]
    if unknown:
        fail(f"-o takes .png (the panel) or .mp4 (the animation) files, got {', '.join(unknown)}")
    learned = None
    if checkpoint is not None:
        from motionssl.eval.motion import LearnedMotion
        from motionssl.train.checkpoint import CheckpointError
        from motionssl.train.config import ConfigError

        try:
            learned = LearnedMotion(checkpoint)
        except (CheckpointError, ConfigError) as e:
            fail(str(e))

    s = _open(store)
    try:
        chosen = [int(x) for x in frames.split(",")] if frames else None
    except ValueError:
        fail(f"--frames must be comma-separated integers, got {frames!r}")
    try:
        for path in output:
            if path.suffix.lower() == ".png":
                image = render_panel(s, video_id, steps=chosen, count=count, max_motion=max_motion, learned=learned)
                write_png(image, path)
                typer.echo(f"wrote {path} ({image.shape[1]}x{image.shape[0]})")
            else:
                n = write_video(s, video_id, path, max_motion=max_motion, learned=learned)
                typer.echo(f"wrote {path} ({n} frames)")
    except (ValueError, StoreError) as e:
        fail(str(e))


@app.command()
@run_options
def pretrain(
    store: Optional[str] = typer.Argument(None, help=f"{STORE_HELP} Optional with --config or --resume auto, "
                                                      "which may name it."),
    output: Path = typer.Option(..., "-o", "--output", help="Run directory: config, checkpoints, logs."),
    method: Optional[Method] = typer.Option(None, help=f"Self-supervised method (default {PretrainConfig.method}); "
                                            "its paper settings are its defaults."),
    option: list[str] = typer.Option([], "--option", help="A method option as KEY=VALUE (YAML value), repeatable, "
                                     "e.g. --option tau=0.1 --option queue_size=16384."),
    mv_source: Optional[str] = typer.Option(None, "--mv-source", help="mvcgc: store (default) reads motion vectors "
                                            "from the store; decode decodes them from the original videos (PyAV)."),
    config: Optional[Path] = typer.Option(None, help="YAML config; CLI options override it."),
    resume: Optional[str] = typer.Option(None, help="auto (continue RUN_DIR if it has a checkpoint) or a checkpoint path."),
    allow_store_change: bool = ALLOW_STORE_CHANGE,
    skip_broken: Optional[bool] = typer.Option(None, "--skip-broken", help="Leave out videos the start-up check "
                                               "finds broken (named on stderr) instead of stopping."),
    skip_nonfinite: Optional[bool] = typer.Option(None, "--skip-nonfinite", help="Skip batches whose loss is NaN "
                                                  "or inf (each named on stderr, counted in log.csv), not stop."),
    data_timeout: Optional[float] = typer.Option(None, min=0.0, help="Stop, naming the sample, when DataLoader "
                                                 "workers give no batch for this many seconds "
                                                 f"({_default('data_timeout')}; 0 = wait)."),
    **run,
):
    """Pretrain a method on a store, on one device or many (launch with torchrun for DDP).

    Exit status: 0 finished or halted; 1 a fault while training; 2 an error found before training (another run
    holding RUN_DIR included); 143 stopped by SIGTERM after saving the step it was in (continue with --resume auto).
    """
    import yaml

    from motionssl.stores import StoreError
    from motionssl.train.checkpoint import CheckpointError
    from motionssl.train.config import ConfigError, load_yaml, resolve
    from motionssl.train.datasets import MissingModality
    from motionssl.train.faults import TrainingFault
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
        if mv_source is not None:
            options["mv_source"] = mv_source
        name = method.value if method else yaml_values.get("method") or PretrainConfig.method
        if name not in METHODS:
            raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
        cli_values = _config_values(store, output, run, method=name, skip_broken=skip_broken,
                                    skip_nonfinite=skip_nonfinite, data_timeout=data_timeout, method_options=options)
        cfg = resolve(METHODS[name].defaults, yaml_values, cli_values, source=str(config or "command line"))
        summary = train(cfg, resume=resume, allow_store_change=allow_store_change)
    except (ConfigError, StoreError, MissingModality, CheckpointError) as e:
        fail(str(e))
    except TrainingFault as e:  # after work started: exit 1, the last checkpoint is kept
        fail(str(e), 1)
    if summary is not None and os.environ.get("RANK", "0") == "0":
        typer.echo(f"pretrain: {_run_state(summary)}; run directory {summary['run_dir']} (checkpoint.pt, log.csv, "
                   f"tensorboard/)")
    _exit_if_terminated(summary)


def _run_state(summary: dict) -> str:
    if summary["finished"]:
        return "finished"
    stopped = f"stopped by {summary['terminated']}" if summary.get("terminated") else "halted"
    return f"{stopped} at step {summary['steps']} of {summary['total_steps']} (saved; continue with --resume auto)"


def _exit_if_terminated(summary) -> None:
    """A run stopped by SIGTERM saved its checkpoint, but did not finish: 143, as if the signal had ended it."""
    from motionssl.train.loop import EXIT_TERMINATED

    if summary is not None and summary.get("terminated"):
        raise typer.Exit(EXIT_TERMINATED)


@app.command()
@run_options
def finetune(
    store: Optional[str] = typer.Argument(None, help="Store holding the labelled videos (optional with --config or "
                                                      "--resume auto, which may name it)."),
    output: Path = typer.Option(..., "-o", "--output", help="Run directory: config, checkpoints, logs."),
    checkpoint: Optional[Path] = typer.Option(None, help="A pretrain run's checkpoint.pt: its backbone (architecture "
                                              "and weights) is the starting point; its clip length, stride and size "
                                              "are the defaults."),
    labels: list[Path] = typer.Option([], "--labels", help="Label files: a CSV video_id,label,split; Kinetics-400 "
                                      "CSVs (repeat for train and validate); a UCF101 or HMDB51 split folder."),
    split: Optional[int] = typer.Option(None, min=1, max=3, help="UCF101 / HMDB51 split number (default 1)."),
    linear_probe: bool = typer.Option(False, "--linear-probe", help="Freeze the backbone (BatchNorm statistics "
                                      "included) and train a linear classifier."),
    cached_features: bool = typer.Option(False, "--cached-features", help="With --linear-probe: compute the frozen "
                                         "features of --views centre clips per video once and train on them (fast)."),
    views: int = typer.Option(10, min=1, help="Clips per training video for --cached-features and --classifier svm "
                              "(MCL: 20)."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Random initialisation (the checkpoint's "
                                      "architecture, or --backbone): the papers' baseline."),
    dropout: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Dropout before the classifier (full "
                                            "fine-tuning; default 0.3, CMD's)."),
    aux_motion: Optional[float] = typer.Option(None, min=0.0, help="Weight of CMD's motion-prediction loss as a "
                                               "regulariser (paper: 0.2); the store needs motion vectors."),
    classifier: Optional[Classifier] = typer.Option(None, help="With --linear-probe: softmax (a linear layer, "
                                                    "default) or svm (a linear SVM on the video-level cached "
                                                    "features, MCL's protocol; scikit-learn)."),
    stream: Optional[Stream] = typer.Option(None, help="Which encoder classifies: rgb (default), mv (an mvcgc "
                                            "checkpoint's MV encoder on the store's motion vectors) or both (two "
                                            "classifiers, late fusion of their probabilities; MVCGC Tables 2, 4)."),
    config: Optional[Path] = typer.Option(None, help="YAML config; CLI options override it."),
    resume: Optional[str] = typer.Option(None, help="auto or a checkpoint path (as pretrain)."),
    allow_store_change: bool = ALLOW_STORE_CHANGE,
    **run,
):
    """Train a classifier on a labelled split: full fine-tuning, --linear-probe, or --from-scratch.

    Same loop as pretrain (checkpoints, --resume auto, logs, torchrun DDP); evaluate the result with
    `motionssl evaluate classify`.
    """
    from motionssl.train.finetune import Finetune, linear_probe_on_features
    from motionssl.train.labels import SplitError
    from motionssl.stores import StoreError
    from motionssl.train import checkpoint as ckpt
    from motionssl.train.checkpoint import CheckpointError
    from motionssl.train.config import ConfigError, load_yaml, resolve
    from motionssl.train.faults import TrainingFault
    from motionssl.train.datasets import MissingModality
    from motionssl.train.loop import train

    if cached_features and not linear_probe:
        fail("--cached-features needs --linear-probe (a fine-tuned backbone changes its features)")
    svm = classifier is Classifier.svm
    if svm and not linear_probe:
        fail("--classifier svm needs --linear-probe (the SVM is fitted on frozen features)")
    try:
        saved = output / "config.yaml"
        yaml_values = load_yaml(config) if config else (load_yaml(saved) if resume and saved.exists() else {})
        defaults = dict(Finetune.defaults)
        source = checkpoint or yaml_values.get("method_options", {}).get("checkpoint")
        if source:  # the pretrain run's clip settings, unless overridden
            trained = ckpt.load(Path(source)).get("config", {})
            defaults.update({k: trained[k] for k in ("clip_len", "stride", "size") if trained.get(k)})
        options = {"checkpoint": str(checkpoint) if checkpoint else None, "labels": [str(p) for p in labels] or None,
                   "split": split, "linear_probe": linear_probe or None, "from_scratch": from_scratch or None,
                   "dropout": dropout, "aux_motion": aux_motion, "stream": stream.value if stream else None,
                   "classifier": classifier.value if classifier else None}
        cli_values = _config_values(store, output, run, method="finetune",
                                    method_options={k: v for k, v in options.items() if v is not None})
        cfg = resolve(defaults, yaml_values, cli_values, source=str(config or "command line"))
        if cached_features or svm:  # an SVM is fitted on cached features, always
            summary = linear_probe_on_features(cfg, views=views, device="cuda" if _cuda() else "cpu")
        else:
            summary = train(cfg, resume=resume, method_cls=Finetune, allow_store_change=allow_store_change)
    except (ConfigError, StoreError, SplitError, CheckpointError, MissingModality) as e:
        fail(str(e))
    except TrainingFault as e:
        fail(str(e), 1)
    if summary is not None and os.environ.get("RANK", "0") == "0":
        typer.echo(f"finetune: {_run_state(summary)}; run directory {summary['run_dir']} (checkpoint.pt, log.csv)")
    _exit_if_terminated(summary)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


evaluate_app = typer.Typer(help="Evaluate a checkpoint: retrieval R@k or classification accuracy; or motion "
                                "representations by next-frame prediction.",
                           no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")


def _protocol(views: int, clip_len, stride, size, batch_size: int, workers: int, crops: Crops = Crops.one):
    from motionssl.eval.evaluate import Protocol

    return Protocol(views=views, clip_len=clip_len, stride=stride, size=size, batch_size=batch_size, workers=workers,
                    crops=int(crops.value))


def _evaluate(run, checkpoint: Path, store: str, labels: list[Path], output: Path, split: int, protocol) -> None:
    from motionssl.train.labels import SplitError
    from motionssl.stores import StoreError
    from motionssl.train.checkpoint import CheckpointError
    from motionssl.train.datasets import MissingModality

    if not labels:
        fail("pass --labels FILE (see `motionssl finetune --help` for the formats)")
    try:
        result = run(checkpoint, _location(store), labels, output, split=split, protocol=protocol)
    except (StoreError, SplitError, CheckpointError, MissingModality, ValueError) as e:
        fail(str(e))
    typer.echo(result["table"].rstrip())
    for name, path in result["pictures"].items():
        typer.echo(f"{name}: {path}")


CLIP_HELP = "(default: the checkpoint's)"


@evaluate_app.command("retrieve")
def evaluate_retrieve(
    store: str = typer.Argument(..., help="Store holding the labelled videos (a directory or a URL)."),
    checkpoint: Path = typer.Option(..., help="A pretrain or finetune checkpoint.pt."),
    labels: list[Path] = typer.Option([], "--labels", help="Label files, as for finetune."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for retrieval.json, .md and pictures."),
    split: int = typer.Option(1, min=1, max=3, help="UCF101 / HMDB51 split number."),
    views: int = typer.Option(10, min=1, help="Evenly spaced clips per video, features averaged."),
    clip_len: Optional[int] = typer.Option(None, min=1, help=f"Frames per clip {CLIP_HELP}."),
    stride: Optional[int] = typer.Option(None, min=1, help=f"Frame stride {CLIP_HELP}."),
    size: Optional[int] = typer.Option(None, min=8, help=f"Centre crop side {CLIP_HELP}."),
    crops: Crops = typer.Option(Crops.one, help="Test crops per clip, features averaged: 1 (centre square), 3 (both "
                              "ends and the centre of the long side) or 10 (CoCLR's ten-crop: corners, centre, flips)."),
    batch_size: int = typer.Option(8, min=1, help="Videos per forward pass."),
    workers: int = typer.Option(0, min=0, help="DataLoader workers."),
    network: Network = typer.Option(Network.v, help="Which network's features: v, the backbone (CMD's V-network); "
                                    "i or m, a `cmd` checkpoint's I-network (single frames) or M-network (motion "
                                    "vectors; paper 000 Table 5)."),
    stream: Stream = typer.Option(Stream.rgb, help="rgb: the backbone on RGB clips; mv: an mvcgc checkpoint's MV "
                                  "encoder on the store's motion vectors; both: the two, features fused (MVCGC "
                                  "Tables 2, 5)."),
):
    """Nearest-neighbour retrieval (CoCLR): test videos query train videos; R@1, 5, 10, 20, 50."""
    from motionssl.eval.evaluate import evaluate_retrieval

    _evaluate(functools.partial(evaluate_retrieval, network=network.value, stream=stream.value), checkpoint, store,
              labels, output, split, _protocol(views, clip_len, stride, size, batch_size, workers, crops))


@evaluate_app.command("classify")
def evaluate_classify(
    store: str = typer.Argument(..., help="Store holding the labelled videos (a directory or a URL)."),
    checkpoint: Path = typer.Option(..., help="A finetune checkpoint.pt."),
    labels: list[Path] = typer.Option([], "--labels", help="Label files, as for finetune."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for classification.json, .md and pictures."),
    split: int = typer.Option(1, min=1, max=3, help="UCF101 / HMDB51 split number."),
    views: int = typer.Option(10, min=1, help="Evenly spaced clips per video, softmax probabilities averaged."),
    clip_len: Optional[int] = typer.Option(None, min=1, help=f"Frames per clip {CLIP_HELP}."),
    stride: Optional[int] = typer.Option(None, min=1, help=f"Frame stride {CLIP_HELP}."),
    size: Optional[int] = typer.Option(None, min=8, help=f"Centre crop side {CLIP_HELP}."),
    crops: Crops = typer.Option(Crops.one, help="Test crops per clip: 1 (centre square), 3 (the 10 x 3 views of MoDist / "
                              "SlowFast) or 10 (ten-crop, MVCGC / CoCLR); probabilities averaged over clips x crops."),
    batch_size: int = typer.Option(8, min=1, help="Videos per forward pass."),
    workers: int = typer.Option(0, min=0, help="DataLoader workers."),
    stream: Optional[Stream] = typer.Option(None, help="The stream(s) to classify with (default: the one the run was "
                                            "fine-tuned on); a `finetune --stream both` run takes rgb, mv or both "
                                            "(late fusion)."),
):
    """Top-1 / top-5 accuracy on the test videos, probabilities averaged over evenly spaced clips (x crops)."""
    from motionssl.eval.evaluate import evaluate_classification

    _evaluate(functools.partial(evaluate_classification, stream=stream.value if stream else None), checkpoint, store,
              labels, output, split, _protocol(views, clip_len, stride, size, batch_size, workers, crops))


@evaluate_app.command("motion")
def evaluate_motion(
    store: str = typer.Argument(..., help="Store whose frames are predicted (any spec; its mv and flow are rows)."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for motion.json, .md and pictures."),
    checkpoint: Optional[Path] = typer.Option(None, help="A `pretrain --method cgm` checkpoint.pt: adds a row for its "
                                              "learned motion maps."),
    flow_store: list[Path] = typer.Option([], "--flow-store", help="Another store of the same videos at the same size "
                                          "whose flow is one more row (e.g. a `default` TV-L1 extract next to a "
                                          "`fast` DIS one); repeatable."),
    video_id: list[str] = typer.Option([], "--video-id", help="A video id to evaluate, repeatable (default: all)."),
    max_videos: Optional[int] = typer.Option(None, min=1, help="Evaluate at most this many videos."),
    margin: int = typer.Option(8, min=0, help="Pixels left out at each side for the interior l1."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Warp each frame with each motion representation and measure the l1 error against the true next frame
    (frames in [-1, 1], CGM-Net Table 1), with PSNR and SSIM (its right half): identity (no motion), motion
    vectors, stored flow, CGM-Net maps."""
    from motionssl.eval.motion import evaluate_motion as run
    from motionssl.stores import StoreError
    from motionssl.train.checkpoint import CheckpointError
    from motionssl.train.config import ConfigError

    try:
        result = run(_location(store), output, checkpoint_path=checkpoint, flow_stores=flow_store, videos=video_id or None,
                     max_videos=max_videos, margin=margin, progress=progress)
    except (StoreError, CheckpointError, ConfigError, ValueError) as e:
        fail(str(e))
    typer.echo(result["table"].rstrip())
    for name, path in result["pictures"].items():
        typer.echo(f"{name}: {path}")



@app.command("convert-checkpoint")
def convert_checkpoint(
    old: Path = typer.Argument(..., help="A checkpoint written before format 2 (numpy RNG state)."),
    output: Path = typer.Option(..., "-o", "--output", help="The converted checkpoint to write."),
    trust: bool = typer.Option(False, "--trust", help="You made OLD or trust where it came from: reading it needs "
                               "numpy's array types beyond the safe loader's."),
):
    """Rewrite an old-format checkpoint so that it loads with the safe loader (tensors and plain values only)."""
    from motionssl.train.checkpoint import CheckpointError, convert

    try:
        payload = convert(old, output, trust=trust)
    except CheckpointError as e:
        fail(str(e))
    typer.echo(f"wrote {output}: format {payload['format']}, step {payload.get('step')}")

@app.command()
def plot(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (each with a log.csv), overlaid."),
    output: Path = typer.Option(Path("compare.png"), "-o", "--output", help="PNG to write."),
    keys: str = typer.Option("loss,lr,clips_per_s,acc,context_top1,motion_top1,cross_top1",
                             help="Comma-separated log.csv columns, one panel each "
                             "(columns no run logged are left out)."),
):
    """Overlay several runs' training curves (loss, lr, clips/s, accuracies) in one PNG."""
    from motionssl.pictures import write_png
    from motionssl.pictures.curves import overlay_runs
    from motionssl.train.run_log import read_log

    missing = [str(d) for d in run_dirs if not (d / "log.csv").is_file()]
    if missing:
        fail(f"no log.csv in {', '.join(missing)}")
    try:
        image = overlay_runs([(str(d), read_log(d)) for d in run_dirs], keys=tuple(k.strip() for k in keys.split(",") if k.strip()))
    except ValueError as e:
        fail(str(e))
    write_png(image, output)
    typer.echo(f"wrote {output} ({image.shape[1]}x{image.shape[0]})")


if __name__ == "__main__":  # python -m motionssl.cli, as python -m motionssl
    app(prog_name="motionssl")
