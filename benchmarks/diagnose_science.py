"""Why does a method learn (or not learn) motion? Diagnostics of bench_science's trained runs (issue 16, part 3).

    .venv/bin/python benchmarks/diagnose_science.py --out bench_out --seed 0   # after bench_science.py, minutes

For each method's run of `bench_science.py` (OUT/science_600_72_8/NAME-sSEED/checkpoint.pt):
- **pretext**: each task's accuracy and loss at the first and the last log row, beside chance;
- **gradients**: on one training batch (16 videos, 2 of each class) with the trained weights, the norm of the
  gradient that each loss term sends into the evaluated RGB backbone (`Method.encoder()`): does the motion term
  reach the representation, and how strongly beside the appearance term?
- **backbone**: the benchmark's probe on the pooled features and on the whole last feature map, flattened: is
  the motion there, but placed where the global average pool loses it?
- **motion path**: the same probe as the benchmark's (retrieval R@1 and linear top-1, test videos against training
  videos) on the trained motion encoder (CMD's M-network on motion vectors, MVCGC's MV stream, MoDist's flow-edge
  pathway): does the motion signal itself tell the classes apart? An untrained encoder of each, for reference;
- **CGM-Net**: reconstruction error against copying the frame (identity warp), over the log;
- **MCL**: where the MAL target lies: the share of the clip's motion-boundary mass inside the moving object
  (pixels whose colour changes between frames by more than 8/255; the backgrounds are static), against the share
  of the frame the object covers, at full resolution and at the resolution MAL aligns (the backbone's last map).
Writes OUT/diagnose_science_sSEED.json (one entry per method; methods diagnosed before are kept).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench_science import COMMON, VIEWS, probe, split_of
from machine import machine_info

CHANCE_CLASSES = 8


def log_rows(run: Path) -> list[dict]:
    with open(run / "log.csv") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


def load_method(run: Path):
    from motionssl.stores import open_store
    from motionssl.train import checkpoint
    from motionssl.train.config import config_from_dict
    from motionssl.train.methods import METHODS

    payload = checkpoint.load(run / "checkpoint.pt")
    cfg = config_from_dict(payload["config"], source=str(run / "checkpoint.pt"))
    cls = METHODS[cfg.method]
    method = cls(cfg, total_steps=cfg.steps)
    method.load_state_dict(payload["method"])
    return method, cfg, cls, open_store(cfg.store)


def spread_batch(dataset, *, per_class: int = 2) -> dict:
    """Videos 0..per_class-1 of each class (the store lists videos class by class), one training draw each."""
    from motionssl.train.collate import collate
    from motionssl.train.datasets import finish_batch

    classes: dict[str, list[int]] = {}
    for i, vid in enumerate(dataset.videos):
        classes.setdefault(vid.split("/")[0], []).append(i)
    picks = [i for ids in classes.values() for i in ids[:per_class]]
    return finish_batch(collate([dataset[(i, 0)] for i in picks]))


def loss_terms(name: str, method, batch: dict) -> dict[str, torch.Tensor]:
    """Each loss term of the method on `batch`, separately (with the trained weights, in training mode)."""
    step = method.total_steps - 1
    if name == "rgb-moco":
        return {"nce": method(batch, step=step)["loss"]}
    if name == "cmd":
        o, terms, alpha_run = method.opts, {}, method.opts.alpha
        for term, alpha in (("context", 0.0), ("motion", 1.0)):
            o.alpha = alpha
            terms[term] = method(batch, step=step)["loss"]
        o.alpha = alpha_run
        return terms
    if name == "mcl":
        out = method.losses(batch, step=step)
        return {k: v for k, v in out.items() if k != "pos_sim"}
    if name == "modist":
        return method.losses(batch, step=step)
    if name == "mvcgc":
        terms, _ = method.losses(batch, step=step)
        return {"stage1_rgb": terms["rgb"], "stage2_rgb_to_mv": terms["cross_rgb"]}
    if name == "cgm":
        return {"reconstruction": method(batch, step=step)["loss"]}
    raise KeyError(name)


def gradient_norms(name: str, run: Path) -> dict:
    """{term: (loss value, norm of its gradient in the evaluated backbone)} on one spread batch."""
    method, cfg, cls, store = load_method(run)
    method.train()
    batch = spread_batch(cls.dataset(cfg, store))
    torch.manual_seed(0)
    params = [p for p in method.encoder().parameters() if p.requires_grad]
    out = {}
    for term, value in loss_terms(name, method, batch).items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        norm = torch.sqrt(sum(((g.float() ** 2).sum() for g in grads if g is not None), torch.zeros(())))  # 0: no path
        out[term] = {"loss": value.item(), "grad_norm": float(norm)}
    return out


# -- the motion path's own probe -----------------------------------------------------------------------------------

def motion_encoder(name: str, method, *, edges_clamp: float):
    """(modality, clip length, function from a test view to pooled features) of the method's motion encoder."""
    if name == "cmd":
        mp = method.motion

        def f(view):
            from motionssl.train.motion_prediction import scale_motion
            x = F.interpolate(scale_motion(view["mv"], mp.mv_clamp), size=mp.m_size, mode="nearest")
            return mp.m_network.forward_features(x).mean(dim=(2, 3, 4))
        return "mv", mp.m_size[0], f
    if name == "mvcgc":
        return "mv", method.cfg.clip_len, lambda view: method.mv.backbone(method.mv_input(view))
    if name == "modist":
        clamp = edges_clamp
        return "edges", method.opts.motion_clip_len, \
            lambda view: method.motion_backbone(method.motion_input(view["edges"].float() / clamp))
    raise KeyError(name)


def motion_probe(name: str, method, stores: dict[str, Path]) -> dict:
    from motionssl.stores import open_store
    from motionssl.train.datasets import ClipDataset, Needs

    method.eval()
    clamp = float(open_store(stores["train"]).spec.flow.edges_clamp)
    modality, clip_len, encode = motion_encoder(name, method, edges_clamp=clamp)
    feats = {}
    for split, path in stores.items():
        store = open_store(path)
        videos, labels, _ = split_of(path)
        ds = ClipDataset(store, Needs(modalities=(modality,), clip_len=clip_len, stride=COMMON["stride"],
                                      views=VIEWS), size=COMMON["size"], train=False, videos=videos, labels=labels)
        rows = []
        for i in range(len(ds)):
            sample = ds[i]
            views = {k: torch.stack([v[k] for v in sample["views"]]) for k in sample["views"][0] if k != "frames"}
            with torch.no_grad():
                rows.append(encode(views).float().numpy())
        feats[split] = (np.stack(rows), np.array(labels))
    return probe(feats["train"], feats["test"], seed=0)


# -- the evaluated backbone: pooled features against its whole last map ----------------------------------------------

class MapFeatures(torch.nn.Module):
    """The backbone's last feature map, flattened (C x T' x H' x W'), instead of its global average."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x).flatten(1)


def backbone_probes(run: Path, stores: dict[str, Path]) -> dict:
    """The benchmark's probe on the pooled features (as bench_science) and on the flattened last map: motion that the
    backbone encodes in where its features sit on the map is lost by the global average pool."""
    from bench_science import features
    from motionssl.train.features import load_backbone

    backbone, _, _ = load_backbone(run / "checkpoint.pt")
    model = MapFeatures(backbone)
    return {"pooled": probe(features(backbone, stores["train"]), features(backbone, stores["test"]), seed=0),
            "map": probe(features(model, stores["train"]), features(model, stores["test"]), seed=0)}


# -- CGM and MCL ---------------------------------------------------------------------------------------------------

def cgm_reconstruction(run: Path) -> dict:
    rows = log_rows(run)
    pick = lambda r: {k: r[k] for k in ("step", "l1_recon", "l1_copy", "l1_future") if k in r}  # noqa: E731
    return {"first": pick(rows[0]), "last": pick(rows[-1]),
            "recon_over_copy_last": rows[-1]["l1_recon"] / rows[-1]["l1_copy"]}


def mal_target_on_object(store_path: Path, *, map_size: tuple[int, int], videos: int = 64) -> dict:
    """Share of the boundary maps' mass inside the moving object, against the object's share of the frame."""
    from motionssl.stores import open_store

    store = open_store(store_path)
    ids = store.videos[:: max(1, len(store.videos) // videos)][:videos]
    inside, area, inside_lr, area_lr = [], [], [], []
    for vid in ids:
        rgb = store.read(vid, "rgb").astype(np.float32)                 # (T, H, W, 3)
        boundary = store.read(vid, "boundary").astype(np.float32)[:-1]  # (T-1, H, W): frame t -> t+1
        moving = (np.abs(np.diff(rgb, axis=0)).max(axis=3) > 8).astype(np.float32)
        mass = boundary.sum()
        inside.append(float((boundary * moving).sum() / max(mass, 1e-9)))
        area.append(float(moving.mean()))
        b = F.adaptive_avg_pool2d(torch.from_numpy(boundary)[:, None], map_size)[:, 0].numpy()
        m = F.adaptive_avg_pool2d(torch.from_numpy(moving)[:, None], map_size)[:, 0].numpy()
        hot = m > 0.5  # low-resolution cells mostly covered by the moving object
        inside_lr.append(float((b * hot).sum() / max(b.sum(), 1e-9)))
        area_lr.append(float(hot.mean()))
    return {"boundary_mass_on_object": float(np.mean(inside)), "object_area": float(np.mean(area)),
            "map_size": list(map_size), "boundary_mass_on_object_cells": float(np.mean(inside_lr)),
            "object_cells": float(np.mean(area_lr))}


PRETEXT = {  # log columns and their chance level (None: a loss, no chance level given)
    "rgb-moco": {"pos_sim": None},
    "cmd": {"context_top1": 1 / COMMON["batch_size"], "motion_top1": None, "context_loss": None,
            "motion_loss": None},
    "mvcgc": {"rgb_top1": None, "mv_top1": None, "cross_top1": None, "positives": None},
    "mcl": {"nce": None, "mal_st": 2.0, "mal_s": 2.0, "mal_t": 2.0, "pos_sim": None},
    "modist": {"loss_v": None, "loss_m": None, "loss_mv": None},
    "cgm": {"l1_recon": None, "l1_copy": None},
}


def diagnose(name: str, run: Path, stores: dict[str, Path]) -> dict:
    rows = log_rows(run)
    cols = PRETEXT[name]
    out: dict = {"pretext": {k: {"first": rows[0].get(k), "last": rows[-1].get(k), "chance": c}
                             for k, c in cols.items()}}
    out["gradients"] = gradient_norms(name, run)
    out["backbone"] = backbone_probes(run, stores)
    if name in ("cmd", "mvcgc", "modist"):
        method, cfg, _, _ = load_method(run)
        out["motion_path_trained"] = motion_probe(name, method, stores)
        torch.manual_seed(0)
        fresh = type(method)(cfg, total_steps=cfg.steps)
        out["motion_path_untrained"] = motion_probe(name, fresh, stores)
    if name == "cgm":
        out["reconstruction"] = cgm_reconstruction(run)
    if name == "mcl":
        out["mal_target"] = mal_target_on_object(stores["train"], map_size=(3, 3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--per-class", type=int, default=72)
    ap.add_argument("--test-per-class", type=int, default=8)
    ap.add_argument("--methods", default="rgb-moco,cmd,mvcgc,mcl,modist,cgm")
    a = ap.parse_args()
    torch.set_num_threads(2)
    runs = a.out / f"science_{a.steps}_{a.per_class}_{a.test_per_class}"
    data = a.out / f"science_data_{a.per_class}_{a.test_per_class}"
    stores = {"train": data / "train.zarr", "test": data / "test.zarr"}
    path = a.out / f"diagnose_science_s{a.seed}.json"  # methods diagnosed before are kept
    report = json.loads(path.read_text()) if path.exists() else {"seed": a.seed, "methods": {}}
    report["machine"] = machine_info(("torch",))
    for name in a.methods.split(","):
        run = runs / f"{name}-s{a.seed}"
        if not (run / "checkpoint.pt").exists():
            print(f"{name}: no run at {run}; run bench_science.py first")
            continue
        report["methods"][name] = diagnose(name, run, stores)
        print(name, json.dumps(report["methods"][name], indent=1), flush=True)
        path.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
