"""Extraction specs: declarative YAML files that say what a store holds and how.

A spec is loaded by name (a YAML file shipped in this package) or by path. The store records
the spec it was made with, so readers know the layout without guessing.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

SPEC_VERSION = 1
KNOWN_SPEC_VERSIONS = (1,)
MODALITIES = ("rgb", "iframes", "mv", "flow", "boundary", "edges")
FLOW_MODALITIES = ("flow", "boundary", "edges")
# What each spec modality puts in a store (dump accepts these names).
ARRAYS = {
    "rgb": ("rgb",),
    "iframes": ("iframes", "iframe_index"),
    "mv": ("mv", "mv_valid"),
    "flow": ("flow",),
    "boundary": ("boundary",),
    "edges": ("edges",),
}
FLOW_METHOD_NAMES = ("tvl1-opencv", "dis", "raft", "tvl1-torch")
# Earlier names of flow methods: still read (older specs, stores' recorded specs) and hashed as they were.
FLOW_METHOD_RENAMED = {"tvl1": "tvl1-opencv"}
DIS_PRESETS = ("ultrafast", "fast", "medium")
ALWAYS_STORED = ("pts", "frame_type")


class SpecError(ValueError):
    """A spec that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Resolution:
    short_side: int = 128


@dataclass(frozen=True)
class Decode:
    max_pixels: int = 36_000_000


@dataclass(frozen=True)
class MotionVectors:
    cell: int = 4


@dataclass(frozen=True)
class Flow:
    """Optical flow and the maps derived from it (used when flow, boundary or edges is a modality)."""

    method: str = "tvl1-opencv"     # tvl1-opencv | tvl1-torch (the same TV-L1, batched in PyTorch) | dis | raft
    dis_preset: str = "medium"      # ultrafast | fast | medium
    raft_model: str = "large"       # large | small
    raft_weights: str | None = None  # local state-dict file; None: torch hub cache
    raft_iters: int = 12
    batch: int = 8                  # pairs per call to the flow method (RAFT, tvl1-torch batch)
    block_frames: int = 32          # frames buffered per flow block: bounds memory on long videos
    boundary_operator: str = "prewitt"  # prewitt | sobel | central
    edges_gap: int = 5              # edges come from the flow t -> t - edges_gap (MoDist)
    edges_flow: str = "separate"    # separate: compute t -> t-gap; derived: minus the sum of forward flows
    edges_clamp: float = 10.0
    store_as: str = "uint8"         # uint8: linear over [-store_bound, store_bound] (denseflow); float16
    store_bound: float = 20.0
    maps_store_as: str = "float16"  # float16 | uint8: boundary over [0, boundary_bound], edges over [0, edges_clamp]
    boundary_bound: float = 5.0     # uint8 boundary saturates here (0.05 % of values beyond it, benchmarks/README.md)


BLOSC_CODECS = ("blosclz", "lz4", "lz4hc", "zlib", "zstd")  # Blosc's compressors (zarr and the HDF5 filter)


@dataclass(frozen=True)
class Storage:
    chunk_frames: int = 8
    shard_frames: int = 64
    zarr_codec: str = "zstd"
    zarr_level: int = 1
    hdf5_compression: str = "lzf"   # blosc: HDF5 filter 32001 (hdf5plugin) with zarr_codec, zarr_level
    rgb_codec: str = "blosc"        # blosc | h264: each rgb/iframes chunk one H.264 GOP (yuv444p, lossy)
    rgb_crf: int = 12               # h264: libx264 constant rate factor
    flow_codec: str = "blosc"       # blosc | h264: uint8 flow/boundary/edges chunks as lossless H.264
    hdf5_chunk_frames: int = 0      # HDF5 chunks of per-frame arrays (not H.264 ones); 0: chunk_frames
    checksums: bool = True          # each chunk checked on read: crc32c codec (Zarr), fletcher32 filter (HDF5)


# Keys added after stores were first written, with what stores written before them did: hashed only when they
# differ from that, so older stores keep their digest, and a recorded spec without one means that.
_LATER_KEYS = {"storage": {"rgb_codec": "blosc", "rgb_crf": 12, "flow_codec": "blosc", "hdf5_chunk_frames": 0,
                           "checksums": False},
               "flow": {"maps_store_as": "float16", "boundary_bound": 5.0}}


@dataclass(frozen=True)
class Spec:
    name: str
    modalities: tuple[str, ...]
    spec_version: int = SPEC_VERSION
    resolution: Resolution = field(default_factory=Resolution)
    decode: Decode = field(default_factory=Decode)
    mv: MotionVectors = field(default_factory=MotionVectors)
    flow: Flow = field(default_factory=Flow)
    storage: Storage = field(default_factory=Storage)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @property
    def digest(self) -> str:
        """Short hash of everything that changes what is written; names do not count."""
        d = self.to_dict()
        d.pop("name")
        old_names = {new: old for old, new in FLOW_METHOD_RENAMED.items()}
        d["flow"]["method"] = old_names.get(d["flow"]["method"], d["flow"]["method"])
        for section, keys in _LATER_KEYS.items():
            for key, default in keys.items():
                if d[section][key] == default:
                    del d[section][key]
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def needs_flow(self) -> bool:
        return any(m in FLOW_MODALITIES for m in self.modalities)

    def arrays(self) -> tuple[str, ...]:
        out = [a for m in self.modalities for a in ARRAYS[m]]
        return tuple(out) + ALWAYS_STORED


def _section(cls, raw, where: str):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
    defaults = cls()
    for key, value in raw.items():
        _check_type(value, getattr(defaults, key), f"{where}.{key}")
    return cls(**raw)


def _check_type(value, default, where: str) -> None:
    """`value` has the type of the field's default (an int for a float; a str or null where the default is null)."""
    if default is None:
        ok, kind = value is None or isinstance(value, str), "a string or null"
    elif isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), \
            "a finite number"
    else:
        ok, kind = isinstance(value, str), "a string"
    if not ok:
        raise SpecError(f"{where} must be {kind}, got {value!r}"[:300])


def spec_from_dict(raw: dict, *, source: str = "<dict>", recorded: bool = False) -> Spec:
    """recorded: `raw` is what a store recorded; a key it lacks predates it, and means what stores did before."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a spec must be a YAML mapping")
    if recorded:
        raw = {**raw, **{section: {**keys, **raw.get(section, {})} for section, keys in _LATER_KEYS.items()
                         if isinstance(raw.get(section, {}), dict)}}
    version = raw.get("spec_version")
    if version not in KNOWN_SPEC_VERSIONS:
        raise SpecError(
            f"{source}: spec_version {version!r} is not known to this motionssl "
            f"(knows {list(KNOWN_SPEC_VERSIONS)}); upgrade motionssl or re-extract with this version"
        )
    unknown = set(raw) - {"spec_version", "name", "modalities", "resolution", "decode", "mv", "flow", "storage"}
    if unknown:
        raise SpecError(f"{source}: unknown keys {sorted(map(str, unknown))}")
    mods = raw.get("modalities") or ()
    if not isinstance(mods, (list, tuple)) or not all(isinstance(m, str) for m in mods):
        raise SpecError(f"{source}: modalities must be a list of names from {list(MODALITIES)}, got {mods!r}"[:300])
    mods = tuple(mods)
    flow = raw.get("flow")
    if isinstance(flow, dict) and isinstance(flow.get("method"), str) and flow["method"] in FLOW_METHOD_RENAMED:
        flow = {**flow, "method": FLOW_METHOD_RENAMED[flow["method"]]}
    bad = [m for m in mods if m not in MODALITIES]
    if bad or not mods:
        raise SpecError(f"{source}: modalities must be a non-empty subset of {list(MODALITIES)}, got {list(mods)}")
    spec = Spec(
        name=str(raw.get("name", Path(source).stem)),
        modalities=mods,
        spec_version=version,
        resolution=_section(Resolution, raw.get("resolution"), f"{source}: resolution"),
        decode=_section(Decode, raw.get("decode"), f"{source}: decode"),
        mv=_section(MotionVectors, raw.get("mv"), f"{source}: mv"),
        flow=_section(Flow, flow, f"{source}: flow"),
        storage=_section(Storage, raw.get("storage"), f"{source}: storage"),
    )
    _validate(spec, source)
    return spec


def _validate(spec: Spec, source: str) -> None:
    if spec.resolution.short_side < 16 or spec.resolution.short_side % 2:
        raise SpecError(f"{source}: resolution.short_side must be an even number >= 16")
    if spec.mv.cell < 1:
        raise SpecError(f"{source}: mv.cell must be >= 1")
    fl = spec.flow
    choices = {"method": FLOW_METHOD_NAMES, "dis_preset": DIS_PRESETS, "raft_model": ("large", "small"),
               "boundary_operator": ("prewitt", "sobel", "central"), "edges_flow": ("separate", "derived"),
               "store_as": ("uint8", "float16"), "maps_store_as": ("uint8", "float16")}
    for key, allowed in choices.items():
        if getattr(fl, key) not in allowed:
            raise SpecError(f"{source}: flow.{key} must be one of {list(allowed)}, got {getattr(fl, key)!r}")
    if fl.edges_gap < 1 or fl.batch < 1 or fl.block_frames < fl.edges_gap + 2 or fl.raft_iters < 1:
        raise SpecError(f"{source}: flow needs edges_gap >= 1, batch >= 1, raft_iters >= 1, "
                        f"block_frames >= edges_gap + 2")
    if not fl.boundary_bound > 0 or not fl.edges_clamp > 0:
        raise SpecError(f"{source}: flow.boundary_bound and flow.edges_clamp must be > 0")
    st = spec.storage
    if st.chunk_frames < 1 or st.shard_frames < st.chunk_frames or st.shard_frames % st.chunk_frames:
        raise SpecError(f"{source}: storage.shard_frames must be a positive multiple of chunk_frames")
    if st.hdf5_chunk_frames < 0:
        raise SpecError(f"{source}: storage.hdf5_chunk_frames must be >= 0 (0: chunk_frames)")
    if st.zarr_codec not in BLOSC_CODECS:
        raise SpecError(f"{source}: storage.zarr_codec must be one of {list(BLOSC_CODECS)}, got {st.zarr_codec!r}")
    if isinstance(st.zarr_level, bool) or not isinstance(st.zarr_level, int) or not 0 <= st.zarr_level <= 9:
        raise SpecError(f"{source}: storage.zarr_level must be an integer in [0, 9], got {st.zarr_level!r}")
    if st.hdf5_compression not in ("blosc", "lzf", "gzip", "none"):
        raise SpecError(f"{source}: storage.hdf5_compression must be blosc, lzf, gzip or none")
    for key in ("rgb_codec", "flow_codec"):
        if getattr(st, key) not in ("blosc", "h264"):
            raise SpecError(f"{source}: storage.{key} must be blosc or h264, got {getattr(st, key)!r}")
    if isinstance(st.rgb_crf, bool) or not isinstance(st.rgb_crf, int) or not 0 <= st.rgb_crf <= 51:
        raise SpecError(f"{source}: storage.rgb_crf must be an integer in [0, 51] (libx264), got {st.rgb_crf!r}")
    if st.flow_codec == "h264" and spec.needs_flow and fl.store_as != "uint8":
        raise SpecError(f"{source}: storage.flow_codec h264 codes uint8 flow; set flow.store_as: uint8")


def builtin_specs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def load_spec(name_or_path: str | Path) -> Spec:
    """Load a shipped spec by name (`default`, `compressed`) or any YAML file by path."""
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or "/" in s:
        path = Path(s)
        if not path.is_file():
            raise SpecError(f"spec file {path} does not exist")
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as e:
            raise SpecError(f"spec file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    else:
        if s not in builtin_specs():
            raise SpecError(f"unknown spec {s!r}; choose one of {builtin_specs()} or give a path to a YAML file")
        text, source = resources.files(__name__).joinpath(f"{s}.yaml").read_text(), f"{s}.yaml"
    import yaml  # here: a decoder process gets its spec as a dict and never parses YAML

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: not valid YAML ({' '.join(str(e).split())})") from None  # one line
    return spec_from_dict(raw, source=source)


def stored_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) of stored frames: short side as given, long side scaled and rounded to even."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad frame size {width}x{height}")
    if width <= height:
        w = short_side
        h = max(2, int(round(height * short_side / width / 2)) * 2)
    else:
        h = short_side
        w = max(2, int(round(width * short_side / height / 2)) * 2)
    return w, h


def mv_grid(width: int, height: int, cell: int) -> tuple[int, int]:
    """(grid_w, grid_h): cell (i, j) covers stored pixels [i*cell, (i+1)*cell) clipped to the frame."""
    return -(-width // cell), -(-height // cell)


def hflip_motion(field, valid=None):
    """Mirror a motion field (..., H, W, 2) left-right: the x component changes sign.

    Every augmentation that flips frames must flip their motion with this, or dx points the
    wrong way (the reference code of CMD forgets the negation).
    """
    out = field[..., ::-1, :].copy()  # the W axis
    out[..., 0] = -out[..., 0]
    if valid is None:
        return out
    return out, valid[..., ::-1].copy()
