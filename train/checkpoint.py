"""Checkpoints: written atomically, holding everything an exact resume needs.

A checkpoint is one `torch.save` file with: the method's state (backbone, heads, momentum encoders, queues as
buffers), the optimiser, the grad scaler, the step and epoch, the resolved config, the RNG states (python, numpy,
torch CPU and CUDA), and the backbone alone (name, builder kwargs, state dict) for `finetune` / `evaluate`.
"""
from __future__ import annotations

import os
import pickle
import random
import uuid
from pathlib import Path

import numpy as np
import torch

LAST = "checkpoint.pt"
FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says what to do."""


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
    """Load a checkpoint written by `save`. Errors are specific: missing file, not a checkpoint, unknown format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (a crash while copying it?); use an older one or start over")
    # weights_only=False: the payload holds numpy RNG state; only load checkpoints you trust. map_location cpu: RNG
    # states must be CPU tensors, and `restore` copies the rest onto the model's device.
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:  # truncated or not a torch file
        raise CheckpointError(f"{path} is damaged or not a torch checkpoint ({type(e).__name__}); "
                              f"use an older checkpoint or start over") from None
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
