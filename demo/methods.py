"""The methods part of `make demo`: every method on the motion-class set, evaluated the papers' ways, one table.

    python demo/methods.py STORE LABELS OUT [--steps 40]

For each method: `motionssl pretrain` (a tiny backbone, a few steps), the linear protocol on cached features
(`finetune --linear-probe --cached-features`, then `evaluate classify`) and retrieval (`evaluate retrieve`). Then
`evaluate motion` and `show --checkpoint` on the CGM-Net run, the training curves overlaid (`plot`), and a table of
every method's top-1 and R@k, written to OUT/methods.md and OUT/methods.json. Each command is printed before it
runs, so that it can be copied. A few dozen steps on a laptop CPU make a smoke test of the whole chain, not a
result: with 16 test videos the numbers move by 1/16 between runs of different seeds.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from motionssl.stores import open_store

MOTIONSSL = str(Path(sys.executable).with_name("motionssl"))
TINY = ["--backbone", "r3d10", "--backbone-width", "8", "--clip-len", "8", "--stride", "2", "--size", "48",
        "--batch-size", "8", "--workers", "2", "--log-every", "10", "--no-progress"]
# Each method's options at this scale: queues that fit 32 training videos, small heads and predictors.
METHOD_OPTIONS = {
    "rgb-moco": ["--lr", "3e-3", "--option", "queue_size=64", "--option", "hidden=128"],
    "cmd": ["--option", "hidden=64", "--option", "heads=4", "--option", "head_hidden=128", "--option", "dim=64",
            "--option", "encoder_layers=1", "--option", "decoder_layers=1", "--option", "future_frames=4"],
    "mvcgc": ["--lr", "3e-3", "--option", "queue_size=64", "--option", "hidden=128"],
    "mcl": ["--lr", "3e-3", "--option", "queue_size=64", "--option", "hidden=128"],
    "modist": ["--lr", "3e-3", "--option", "queue_size=64", "--option", "hidden=128", "--option", "motion_clip_len=8",
               "--option", "motion_stride=2"],
    "cgm": ["--lr", "1e-3"],
}


def motionssl(*args) -> None:
    cmd = [MOTIONSSL, *map(str, args)]
    print("+ motionssl " + shlex.join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("labels", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--methods", default=",".join(METHOD_OPTIONS))
    a = ap.parse_args()
    methods = a.methods.split(",")
    shutil.rmtree(a.out, ignore_errors=True)
    rows = {}
    for m in methods:
        run, linear, ev = a.out / m, a.out / f"{m}-linear", a.out / f"{m}-eval"
        common = ["--labels", a.labels, "--workers", "2"]
        motionssl("pretrain", a.store, "--method", m, "-o", run, *TINY, "--steps", a.steps,
                  "--save-every", a.steps, *METHOD_OPTIONS[m])
        motionssl("finetune", a.store, "--checkpoint", run / "checkpoint.pt", *common, "-o", linear, "--linear-probe",
                  "--cached-features", "--steps", 300, "--lr", 0.01, "--log-every", 50)
        motionssl("evaluate", "classify", a.store, "--checkpoint", linear / "checkpoint.pt", *common, "-o", ev)
        motionssl("evaluate", "retrieve", a.store, "--checkpoint", run / "checkpoint.pt", *common, "-o", ev)
        classify = json.loads((ev / "classification.json").read_text())
        retrieve = json.loads((ev / "retrieval.json").read_text())
        rows[m] = {"top1": classify["accuracy"]["top1"], **retrieve["recall"],
                   "pictures": {**classify["pictures"], **retrieve["pictures"]}}
    if "cgm" in methods:
        ckpt = a.out / "cgm" / "checkpoint.pt"
        motionssl("evaluate", "motion", a.store, "--checkpoint", ckpt, "-o", a.out / "cgm-motion")
        first = open_store(a.store).videos[0]
        motionssl("show", a.store, first, "-o", a.out / "cgm-motion" / "panel.png", "--checkpoint", ckpt)
    motionssl("plot", *(a.out / m for m in methods), "-o", a.out / "curves.png")
    keys = ["top1", "R@1", "R@5", "R@10"]
    table = ("| method | linear top-1 | " + " | ".join(keys[1:]) + " |\n|---|" + "---:|" * len(keys) + "\n"
             + "".join(f"| {m} | " + " | ".join(f"{100 * r[k]:.1f}" for k in keys) + " |\n" for m, r in rows.items()))
    (a.out / "methods.md").write_text(table)
    (a.out / "methods.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{a.steps} steps per method on the motion-class set (classes: motion direction only); linear probe "
          f"top-1 and retrieval R@k on its test part, in %:\n\n{table}")
    print(f"pictures: {a.out}/*-eval/ (confusion.png, recall_at_k.png, retrieval_grid.png), {a.out}/curves.png, "
          f"{a.out}/cgm-motion/ (motion_l1.png, motion_errors.png, panel.png)")


if __name__ == "__main__":
    main()
