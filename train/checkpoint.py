"""Checkpoints: written atomically, holding everything an exact resume needs, loadable without running code.

A checkpoint is one `torch.save` file with: the method's state (backbone, heads, momentum encoders, queues as
buffers), the optimiser, the grad scaler, the step and epoch, the resolved config, the RNG states (python, numpy,
torch CPU and CUDA), and the backbone alone (name, builder kwargs, state dict) for `finetune` / `evaluate`.

Everything in it is a tensor, dict, list, tuple, str, int, float, bool or None, so it loads with
`torch.load(weights_only=True)`: a shared checkpoint cannot run code. Format 1 (before) pickled numpy's RNG state
and needed the full unpickler; `convert` rewrites such a file once its owner vouches for it.
"""
from __future__ import annotations

import os
import pickle
import random
import uuid
import zipfile
from pathlib import Path

import numpy as np
import torch

LAST = "checkpoint.pt"
FORMAT = 2
# What a format-1 file needs beyond the safe loader's types: numpy's RNG state, and nothing else.
FORMAT1_GLOBALS = frozenset({"numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct",
                             "numpy._core.multiarray._reconstruct"})


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says what to do."""


def rng_state() -> dict:
    """The process's RNG states, in the safe loader's types."""
    state = {"python": _python_state(random.getstate()), "numpy": _numpy_state(np.random.get_state()),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state(state: tuple) -> dict:
    version, internal, gauss = state
    return {"version": version, "state": list(internal), "gauss": gauss}


def _numpy_state(state: tuple) -> dict:
    kind, keys, pos, has_gauss, cached_gaussian = state
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # a host with fewer GPUs than the saving one: the first ones
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def save(path: Path, payload: dict) -> None:
    """Write to a temporary name in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # a write that a kill cut short (one writer: rank 0)
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path) -> dict:
    """Load a checkpoint written by `save`, with the safe loader. Errors are specific and one line: missing file,
    not a checkpoint, a file that would run code (naming what it needs), an old format (naming the converter)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (a crash while copying it?); use an older one or start over")
    if not zipfile.is_zipfile(path):  # torch.save's format since 1.6; the legacy one is not loaded
        raise CheckpointError(f"{path} is damaged or not a torch checkpoint (not a torch.save zip file); "
                              f"use an older checkpoint or start over")
    payload = _read(path)
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{path} is not a motionssl checkpoint")
    if payload["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {payload['format']} is not known (knows {FORMAT})")
    return payload


def restore(payload: dict, *, method: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler) -> None:
    """Load a checkpoint's training state into a method already on its device: the weights, momentum encoders and
    queues are copied into its tensors, the optimiser's state follows each parameter's device (torch keeps Adam's
    `step` counts on the CPU), and the grad scaler makes its scale on the device at its first step."""
    method.load_state_dict(payload["method"])
    optimizer.load_state_dict(payload["optimizer"])
    scaler.load_state_dict(payload["scaler"])


def _read(path: Path, allow: list | None = None):
    """torch.load with the safe loader (and the types in `allow`); its refusals and failures as one line."""
    try:
        with torch.serialization.safe_globals(allow or []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the safe loader refused it, or a damaged pickle
        raise CheckpointError(_refusal(path, e)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:  # truncated, or a zip that is not a torch file
        raise CheckpointError(f"{path} is damaged or not a torch checkpoint ({type(e).__name__}); "
                              f"use an older checkpoint or start over") from None


def _unsafe_globals(path: Path) -> list[str]:
    """The types and functions outside the safe loader's list that the pickle in `path` names, read from its
    opcodes without running any (types a pickle builds on the fly are not seen: the loader still checks those)."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError):
        return []


def _is_format1(needs: list[str]) -> bool:
    return bool(needs) and set(needs) <= FORMAT1_GLOBALS


def _refusal(path: Path, error: pickle.UnpicklingError) -> str:
    """Why the safe loader refused `path`, in one line naming what it would have had to create."""
    needs = _unsafe_globals(path)
    if _is_format1(needs):
        return (f"{path} is a format-1 checkpoint (numpy RNG state: {', '.join(needs)}); convert it once with "
                f"`motionssl convert-checkpoint {path} -o NEW.pt --trust` and use NEW.pt")
    if needs:
        return (f"{path} refused: loading it would call {', '.join(needs)}, which a checkpoint never holds and "
                f"which can run code; do not use this file")
    detail = str(error).partition("WeightsUnpickler error:")[2]
    reason = next((line.strip() for line in detail.splitlines() if line.strip()), type(error).__name__)
    return f"{path} refused by the safe loader ({reason}); it is damaged or not a motionssl checkpoint"


def convert(old: Path, new: Path, *, trust: bool) -> dict:
    """Rewrite a format-1 checkpoint in the current format, its RNG states as tensors and plain values.

    Format 1 needs numpy's array and dtype types beyond the safe loader's; they are allowed for this one read
    (nothing else: a file naming any other type is refused), and only with `trust`, the user's word that the file
    is theirs or from a source they trust."""
    old, new = Path(old), Path(new)
    if not zipfile.is_zipfile(old):
        load(old)  # raises its one-line reason: missing, empty, damaged
    needs = _unsafe_globals(old)
    if not needs:
        payload = load(old)
        raise CheckpointError(f"{old} is already a format-{payload['format']} checkpoint; use it as it is")
    if not _is_format1(needs):
        raise CheckpointError(f"{old} is not a format-1 motionssl checkpoint: it would call {', '.join(needs)}; "
                              f"not converted")
    if not trust:
        raise CheckpointError(f"{old} is read only with --trust: pass it if you made this file or trust where it "
                              f"came from")
    reconstruct = np.zeros(0).__reduce__()[0]  # numpy 1 and 2 keep it in different modules
    numpy_types = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), reconstruct]
    payload = _read(old, allow=numpy_types)
    if not isinstance(payload, dict) or payload.get("format") != 1:
        raise CheckpointError(f"{old} is not a format-1 motionssl checkpoint")
    rng = [{**r, "python": _python_state(r["python"]), "numpy": _numpy_state(r["numpy"])}
           for r in payload.get("rng", [])]
    save(new, {**{k: v for k, v in payload.items() if k != "format"}, "rng": rng})
    return load(new)  # proves the result loads with the safe loader


def find_resume(run_dir: Path, resume: str | None) -> Path | None:
    """`auto`: RUN_DIR/checkpoint.pt if it exists, else None (a fresh start); a path: that file, which must exist."""
    if resume is None:
        return None
    if resume == "auto":
        candidate = Path(run_dir) / LAST
        return candidate if candidate.exists() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: no such checkpoint file (use --resume auto to continue RUN_DIR)")
    return path
