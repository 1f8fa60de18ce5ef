"""The `pretrain` configuration: one typed dataclass, loadable from YAML, overridable from the CLI.

Precedence, lowest first: the dataclass defaults, the method's paper settings (`Method.defaults`), the YAML file
(`--config`), then CLI options. The resolved config is written to RUN_DIR/config.yaml, and a resumed run checks
that it matches.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml


# The closed choices of the config, by name, so that the command line can list them without importing torch;
# tests/test_train_config.py checks them against train.methods.METHODS and train.backbones.BACKBONES.
METHOD_NAMES = ("rgb-moco", "cmd", "mvcgc", "mcl", "modist", "cgm")
BACKBONE_NAMES = ("r3d18", "r2plus1d18", "r3d10", "r2d10", "r2d18", "s3d", "c3d", "slow_r50")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


class ConfigError(Exception):
    """A configuration that cannot run; the message says what to change."""


@dataclass
class PretrainConfig:
    method: str = "rgb-moco"
    store: str = ""
    store_version: str | None = None    # written by the run: the store's content digest (stores.Store.version)
    out: str = ""
    # model and data; None = the method's paper setting
    backbone: str | None = None
    backbone_width: int | None = None   # base channels (ResNets, C3D); tiny values for tests
    clip_len: int | None = None
    stride: int | None = None
    size: int | None = None             # square crop side, pixels
    flip: bool = True                   # horizontal flips in training views; False for direction-sensitive data
    # schedule: --steps wins over --epochs
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None       # per process
    optimizer: str | None = None        # sgd | adam | adamw
    lr: float | None = None             # at batch_size * world_size; not rescaled automatically
    weight_decay: float | None = None
    decay_biases_and_norms: bool = False  # weight decay on biases and norm parameters too (the papers' code does)
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0           # cosine floor, as a fraction of lr
    grad_clip: float | None = None      # max global grad norm; None = no clipping
    precision: str = "auto"             # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    method_options: dict = field(default_factory=dict)  # the method's own hyperparameters (its Options dataclass)
    # running
    workers: int = 4
    seed: int = 0
    deterministic: bool = False
    log_every: int = 10
    save_every: int = 500               # steps between checkpoints (and one at the end)
    halt_after: int | None = None       # stop after this many steps in this invocation (preemptible jobs); resume later
    progress: bool = True
    # faults (train/faults.py)
    skip_broken: bool = False           # leave out videos the start-up check finds broken, instead of stopping
    skip_nonfinite: bool = False        # skip a batch whose loss is NaN/inf (counted in the log), instead of stopping
    data_timeout: float = 600.0         # seconds without a batch from the DataLoader workers before stopping; 0 = wait

    @property
    def flip_p(self) -> float:
        """The probability of a horizontal flip per training view. A flip turns leftward motion into rightward and
        clockwise into counter-clockwise, so data whose classes differ by those (Something-Something, the motion
        classes) train with `flip: false`."""
        return 0.5 if self.flip else 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_from_dict(raw: dict, *, source: str) -> PretrainConfig:
    known = {f.name for f in fields(PretrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return PretrainConfig(**raw)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys to values")
    return raw


def resolve(method_defaults: dict, yaml_values: dict, cli_values: dict, *, source: str = "config") -> PretrainConfig:
    """Merge the layers (None in `cli_values` means "not given"); method_options merge key by key."""
    merged: dict = {}
    options: dict = {}
    for layer in (method_defaults, yaml_values, {k: v for k, v in cli_values.items() if v is not None}):
        layer = dict(layer)
        options.update(layer.pop("method_options", None) or {})
        merged.update(layer)
    merged["method_options"] = options
    cfg = config_from_dict(merged, source=source)
    _validate(cfg)
    return cfg


def _validate(cfg: PretrainConfig) -> None:
    if not cfg.store:
        raise ConfigError("no store given: pass STORE (made by `motionssl extract`) as the first argument")
    if not cfg.out:
        raise ConfigError("no run directory given: pass -o RUN_DIR")
    for name in ("clip_len", "stride", "size", "batch_size", "log_every", "save_every"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if cfg.steps is None and cfg.epochs is None:
        raise ConfigError("give --steps or --epochs")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, got {cfg.precision!r}")
    if cfg.optimizer not in (None, "sgd", "adam", "adamw"):
        raise ConfigError(f"optimizer must be sgd, adam or adamw, got {cfg.optimizer!r}")


def write_yaml(cfg: PretrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
