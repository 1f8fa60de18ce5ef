"""Does each method learn motion? Every method against rgb-moco, a random backbone and a supervised bound, 3 seeds.

    .venv/bin/python benchmarks/bench_science.py --out bench_out            # about an hour on 2 CPU cores
    .venv/bin/python benchmarks/bench_science.py --out bench_out --seeds 0 --steps 4 --per-class 4 --test-per-class 1  # smoke

The data: `preprocess/motion_classes.py --classes motions`, 8 classes that differ only in how one textured square
moves over a textured static background (right, left, down, up, rotating clockwise and counter-clockwise, growing,
shrinking); backgrounds, textures, tints, sizes, start angles, places and speeds are drawn independently of the
class. Training and test videos go into two stores (spec benchmarks/science.yaml: every modality, DIS flow), so
pretraining sees only the training videos, and never a label.

Every method trains with the same backbone (R3D-10 at width 16), input (8 frames at stride 1, 48 px crops of 48 px
frames), batch, steps, optimiser (Adam, cosine learning rate) and no horizontal flips (a flip turns each direction
class into its mirror image: README, "Flips"); each method's own options only shrink its queue and heads to the
data (METHOD_OPTIONS). Then, on the frozen backbone's pooled features of `VIEWS` evenly spaced centre clips per
video: retrieval R@1 and R@5 (test videos query the training videos, CoCLR's protocol as `evaluate retrieve`) and a
linear probe (top-1 of a linear classifier trained on the training videos' clip features, clips averaged at test,
as `finetune --linear-probe --cached-features` then `evaluate classify`). Baselines at the same budget: `random`
(an untrained backbone) and `supervised` (the same backbone trained on the labels with cross entropy, as `finetune
--from-scratch`; its own classifier's top-1 is the upper bound). Writes OUT/bench_science.json and .md after every
run; each run's figures are kept in OUT/science_STEPS_PERCLASS_TEST/NAME-sSEED/result.json, so a benchmark stopped part way
continues where it was (delete that folder to start over).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from machine import machine_info

HERE = Path(__file__).resolve().parent
METHODS = ("rgb-moco", "cmd", "mvcgc", "mcl", "modist", "cgm")
BASELINES = ("random", "supervised")
COMMON = {"backbone": "r3d10", "backbone_width": 16, "clip_len": 8, "stride": 1, "size": 48, "batch_size": 16,
          "flip": False, "optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4, "workers": 1, "log_every": 10,
          "save_every": 10**6, "progress": False}
# Only what the data's size asks: queues that hold a fraction of the training videos, heads for a 128-d backbone.
METHOD_OPTIONS: dict[str, dict] = {
    "rgb-moco": {"queue_size": 256, "hidden": 256},
    "cmd": {"hidden": 128, "heads": 4, "head_hidden": 256, "dim": 64, "encoder_layers": 1, "decoder_layers": 1,
            "future_frames": 4, "future_gap": 0},  # the 4 frames after the clip: inside a 12-frame video
    "mvcgc": {"queue_size": 256, "hidden": 256},
    "mcl": {"queue_size": 256, "hidden": 256},
    "modist": {"queue_size": 256, "hidden": 256, "motion_clip_len": 8, "motion_stride": 1},
    "cgm": {"k_hr": 5},  # as measured in benchmarks/README.md, before the reach rule (9) was the default
}
# Rough train seconds per run on one core (benchmarks/README.md), only to order them: the longest start first.
COST = {"cgm": 360, "cmd": 270, "mvcgc": 225, "modist": 175, "rgb-moco": 135, "mcl": 135, "supervised": 90, "random": 6}
FRAMES = 12  # per video
VIEWS = 3  # clips per video at evaluation, evenly spaced over the 5 starts of an 8-frame clip


def build_stores(dest: Path, *, per_class: int, test_per_class: int) -> dict[str, Path]:
    """Motion-class videos written once (kept between runs), split into train/ and test/, each extracted by
    `motionssl extract` into its own store."""
    import csv

    from motionssl.preprocess.motion_classes import write_motion_classes

    videos = dest / "videos"
    labels = write_motion_classes(videos, per_class=per_class, test_per_class=test_per_class, frames=FRAMES,
                                  size=(48, 48), seed=0, classes="motions")
    stores = {}
    for split in ("train", "test"):
        part = dest / f"videos_{split}"
        with open(labels) as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == split]
        for r in rows:
            link = part / f"{r['video_id']}.mp4"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((videos / f"{r['video_id']}.mp4").resolve())
        store = dest / f"{split}.zarr"
        if not store.exists():
            subprocess.run([str(Path(sys.executable).with_name("motionssl")), "extract", str(part), "-o", str(store),
                            "--spec", str(HERE / "science.yaml"), "--workers", "2", "--no-progress"], check=True)
        stores[split] = store
    return stores


def split_of(store_path: Path) -> tuple[list[str], list[int], list[str]]:
    """(video ids, class indices, class names) of a store whose ids are CLASS/NAME."""
    from motionssl.preprocess.motion_classes import CLASS_SETS
    from motionssl.stores import open_store

    classes = list(CLASS_SETS["motions"])
    videos = list(open_store(store_path).videos)
    return videos, [classes.index(v.split("/")[0]) for v in videos], classes


def labels_csv(dest: Path, stores: dict[str, Path]) -> Path:
    """The generic label CSV of the training store (for the supervised bound)."""
    path = dest / "train_labels.csv"
    videos, _, _ = split_of(stores["train"])
    path.write_text("video_id,label,split\n" + "".join(f"{v},{v.split('/')[0]},train\n" for v in videos))
    return path


def resume_of(run: Path) -> str | None:
    """A run that a stopped benchmark left part way (its checkpoint, no result.json) continues from its checkpoint."""
    from motionssl.train import checkpoint

    return "auto" if (run / checkpoint.LAST).exists() else None


def pretrain(method: str, store: Path, run: Path, *, seed: int, steps: int) -> dict:
    from motionssl.train.config import resolve
    from motionssl.train.loop import train
    from motionssl.train.methods import METHODS as ALL

    cfg = resolve(ALL[method].defaults, {}, {**COMMON, "method": method, "store": str(store), "out": str(run),
                                             "seed": seed, "steps": steps,
                                             "method_options": METHOD_OPTIONS[method]})
    return train(cfg, resume=resume_of(run))


def supervised(store: Path, labels: Path, run: Path, *, seed: int, steps: int) -> dict:
    from motionssl.train.finetune import Finetune
    from motionssl.train.config import resolve
    from motionssl.train.loop import train

    cfg = resolve(Finetune.defaults, {}, {**COMMON, "method": "finetune", "store": str(store), "out": str(run),
                                          "seed": seed, "steps": steps,
                                          "method_options": {"labels": [str(labels)], "from_scratch": True,
                                                             "dropout": 0.0}})
    return train(cfg, method_cls=Finetune, resume=resume_of(run))


def features(backbone: torch.nn.Module, store_path: Path) -> tuple[np.ndarray, np.ndarray]:
    from motionssl.train.features import clip_dataset, clip_outputs
    from motionssl.stores import open_store

    videos, labels, _ = split_of(store_path)
    ds = clip_dataset(open_store(store_path), videos, labels, clip_len=COMMON["clip_len"], stride=COMMON["stride"],
                      size=COMMON["size"], views=VIEWS)
    return clip_outputs(backbone, ds, batch_size=32), np.array(labels)


def measure(backbone: torch.nn.Module, stores: dict[str, Path], *, seed: int) -> dict:
    """R@1, R@5 and linear-probe top-1 of a frozen backbone."""
    return probe(features(backbone, stores["train"]), features(backbone, stores["test"]), seed=seed)


def probe(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], *, seed: int) -> dict:
    """R@1, R@5 and linear-probe top-1 of (videos, views, D) clip features with their labels."""
    from motionssl.train.finetune import fit_linear
    from motionssl.eval.metrics import average_clip_probabilities, retrieval, topk_accuracy

    (f_train, y_train), (f_test, y_test) = train, test
    recall, _ = retrieval(f_train, y_train, f_test, y_test, ks=(1, 5))
    torch.manual_seed(seed)
    x = torch.from_numpy(f_train).flatten(0, 1)
    head = torch.nn.Linear(x.shape[1], int(y_train.max()) + 1)
    fit_linear(head, x, torch.from_numpy(y_train).repeat_interleave(VIEWS), steps=300, lr=0.01)
    with torch.no_grad():
        logits = head(torch.from_numpy(f_test)).numpy()
    top1 = topk_accuracy(average_clip_probabilities(logits), y_test, (1,))[1]
    return {"R@1": recall[1], "R@5": recall[5], "linear_top1": top1}


def last_logs(run: Path) -> dict:
    """The last row of a run's log.csv (the pretext task's own figures at the end)."""
    import csv

    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)} if rows else {}


def run_one(name: str, stores: dict[str, Path], labels: Path, out: Path, *, seed: int, steps: int) -> dict:
    from motionssl.train.features import load_backbone
    from motionssl.train.methods.base import build_backbone

    torch.manual_seed(seed)
    run = out / f"{name}-s{seed}"
    done = run / "result.json"
    if done.exists():  # a benchmark stopped part way continues where it was
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    if name == "random":
        backbone, _ = build_backbone(COMMON["backbone"], in_channels=3, width=COMMON["backbone_width"])
        logs, classifier_top1 = {}, None
    else:
        if name == "supervised":
            supervised(stores["train"], labels, run, seed=seed, steps=steps)
        else:
            pretrain(name, stores["train"], run, seed=seed, steps=steps)
        backbone, _, _ = load_backbone(run / "checkpoint.pt")
        logs, classifier_top1 = last_logs(run), None
        if name == "supervised":
            classifier_top1 = classifier_accuracy(run, stores["test"])
    seconds_train = time.perf_counter() - t0
    result = measure(backbone, stores, seed=seed)
    if classifier_top1 is not None:
        result["classifier_top1"] = classifier_top1
    result = {**result, "seconds_train": seconds_train, "seconds": time.perf_counter() - t0, "last_log": logs}
    run.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=1))
    return result


def classifier_accuracy(run: Path, test_store: Path) -> float:
    """Top-1 of the supervised run's own classifier on the test videos (clip probabilities averaged)."""
    from motionssl.train.features import clip_dataset, clip_outputs
    from motionssl.eval.metrics import average_clip_probabilities, topk_accuracy
    from motionssl.stores import open_store
    from motionssl.train.finetune import load_classifier
    from motionssl.train.labels import load_split

    model, payload = load_classifier(run / "checkpoint.pt")
    trained_on = load_split([Path(p) for p in payload["config"]["method_options"]["labels"]],
                            open_store(payload["config"]["store"]).videos)
    videos, _, _ = split_of(test_store)
    labels = [trained_on.classes.index(v.split("/")[0]) for v in videos]  # in the classifier's class order
    ds = clip_dataset(open_store(test_store), videos, labels, clip_len=COMMON["clip_len"], stride=COMMON["stride"],
                      size=COMMON["size"], views=VIEWS)
    return topk_accuracy(average_clip_probabilities(clip_outputs(model, ds, batch_size=32)), np.array(labels),
                         (1,))[1]


def summarise(results: dict[str, list[dict]]) -> dict:
    """Mean and sample std over seeds per figure, and each method's gap to rgb-moco with its std
    (sqrt(std_method^2 + std_rgb_moco^2)), and whether the gap is 10 points and over two of those stds."""
    keys = ("R@1", "R@5", "linear_top1", "classifier_top1")
    table = {}
    for name, runs in results.items():
        row = {}
        for k in keys:
            values = [r[k] for r in runs if k in r]
            if values:
                row[k] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                          "values": values}
        row["seconds_train"] = statistics.mean(r["seconds_train"] for r in runs)
        row["seeds"] = len(runs)
        table[name] = row
    base = table.get("rgb-moco")
    if base:
        for name in METHODS[1:]:
            if name not in table:
                continue
            for k in ("R@1", "linear_top1"):
                gap = table[name][k]["mean"] - base[k]["mean"]
                spread = (table[name][k]["std"] ** 2 + base[k]["std"] ** 2) ** 0.5
                seeded = table[name]["seeds"] > 1 and base["seeds"] > 1  # one seed has no spread to beat
                table[name][f"gap_{k}"] = {"gap": gap, "std": spread,
                                           "goal_met": seeded and gap >= 0.10 and gap > 2 * spread}
    return table


def markdown(table: dict, *, steps: int, seeds: list[int], wall: float, jobs: int = 1, threads: int = 2) -> str:
    def cell(row, k):
        return f"{100 * row[k]['mean']:.1f} ± {100 * row[k]['std']:.1f}" if k in row else "-"

    def gap(row, k):
        g = row.get(f"gap_{k}")
        return "-" if g is None else f"{100 * g['gap']:+.1f} ± {100 * g['std']:.1f}{' ✓' if g['goal_met'] else ''}"

    lines = [f"{steps} steps, seeds {', '.join(map(str, seeds))} asked, wall time {wall / 60:.1f} min "
             f"({jobs} runs at a time, {threads} torch thread{'s' if threads > 1 else ''} each); % mean ± std "
             f"over the seeds run; ✓: at least 10 points over rgb-moco and over 2 std of the difference",
             "", "| method | seeds | R@1 | R@5 | linear top-1 | R@1 − rgb-moco | linear − rgb-moco | train s/run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in table.items():
        extra = f" (classifier {cell(row, 'classifier_top1')})" if "classifier_top1" in row else ""
        lines.append(f"| {name}{extra} | {row['seeds']} | {cell(row, 'R@1')} | {cell(row, 'R@5')} | {cell(row, 'linear_top1')} | "
                     f"{gap(row, 'R@1')} | {gap(row, 'linear_top1')} | {row['seconds_train']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--per-class", type=int, default=72, help="videos per class, test ones included")
    ap.add_argument("--test-per-class", type=int, default=8)
    ap.add_argument("--methods", default=",".join(METHODS + BASELINES))
    ap.add_argument("--jobs", type=int, default=2,
                    help="runs at a time, each in its own process on cores/jobs torch threads (default 2: one core "
                         "each on 2 cores, more steps per second than one run on both)")
    a = ap.parse_args()
    out = a.out / f"science_{a.steps}_{a.per_class}_{a.test_per_class}"  # runs are reused only for the same budget
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    names = a.methods.split(",")
    jobs = max(1, min(a.jobs, len(seeds) * len(names)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    data = a.out / f"science_data_{a.per_class}_{a.test_per_class}"  # stores are reused only at the same size
    stores = build_stores(data, per_class=a.per_class, test_per_class=a.test_per_class)
    labels = labels_csv(data, stores)
    machine = machine_info(("torch", "av", "zarr"))
    done: dict[tuple[str, int], dict] = {}
    md = ""
    for name, seed, r in run_all(names, seeds, stores, labels, out, steps=a.steps, jobs=jobs, threads=threads):
        done[name, seed] = r
        print(f"{name} seed {seed}: R@1 {100 * r['R@1']:.1f}, linear {100 * r['linear_top1']:.1f}"
              + (f", classifier {100 * r['classifier_top1']:.1f}" if "classifier_top1" in r else "")
              + f" ({r['seconds']:.0f} s)", flush=True)
        results = {n: [done[n, s] for s in seeds if (n, s) in done] for n in names
                   if any((n, s) in done for s in seeds)}
        md = write_report(a, results, machine, seeds=seeds, wall=time.perf_counter() - t0, jobs=jobs,
                          threads=threads)  # after every run
    print(md)


def run_all(names: list[str], seeds: list[int], stores: dict[str, Path], labels: Path, out: Path, *, steps: int,
            jobs: int, threads: int) -> Iterator[tuple[str, int, dict]]:
    """Every (method, seed) run, `jobs` at a time, longest first (COST), each writing its result.json; yields them as
    they finish. With one job, they run in this process, one after another; with more, in `jobs` spawned worker
    processes that each take the next run when free (one interpreter and its imports per worker, not per run)."""
    tasks = sorted(((n, s) for s in seeds for n in names), key=lambda t: -COST.get(t[0], 0))
    if jobs == 1:
        for name, seed in tasks:
            yield name, seed, run_one(name, stores, labels, out, seed=seed, steps=steps)
        return
    ctx = multiprocessing.get_context("spawn")  # not daemonic: a run's DataLoader starts its own worker
    todo = ctx.Queue()
    for task in tasks:
        todo.put(task)
    workers = {}  # the parent's end of each worker's pipe -> (process, the run it is on)
    for _ in range(min(jobs, len(tasks))):
        todo.put(None)
        mine, theirs = ctx.Pipe(duplex=False)
        p = ctx.Process(target=serve_runs, args=(todo, theirs, stores, labels, out, steps, threads))
        p.start()
        theirs.close()
        workers[mine] = [p, None]
    try:
        while workers:
            for ready in multiprocessing.connection.wait(list(workers)):
                p, current = workers[ready]
                try:
                    event, name, seed = ready.recv()
                except EOFError:  # the worker is gone: done with the queue, or dead in a run
                    p.join()
                    del workers[ready]
                    if p.exitcode != 0 or current is not None:
                        name, seed = current or ("a run", "?")
                        raise SystemExit(f"bench_science: {name} seed {seed} failed (exit code {p.exitcode}; its "
                                         f"output is above); rerun the same command to continue from the runs that "
                                         f"finished")
                    continue
                workers[ready][1] = (name, seed) if event == "start" else None
                if event == "done":
                    yield name, seed, json.loads((out / f"{name}-s{seed}" / "result.json").read_text())
    finally:
        for p, _ in workers.values():
            p.terminate()


def serve_runs(todo, conn, stores: dict[str, Path], labels: Path, out: Path, steps: int, threads: int) -> None:
    """A worker process: runs from `todo` until its None, saying on `conn` when each starts and ends."""
    torch.set_num_threads(threads)
    while (task := todo.get()) is not None:
        name, seed = task
        conn.send(("start", name, seed))
        run_one(name, stores, labels, out, seed=seed, steps=steps)
        conn.send(("done", name, seed))
    conn.close()


def write_report(a: argparse.Namespace, results: dict, machine: dict, *, seeds: list[int], wall: float, jobs: int,
                 threads: int) -> str:
    table = summarise(results)
    md = markdown(table, steps=a.steps, seeds=seeds, wall=wall, jobs=jobs, threads=threads)
    report = {"machine": machine, "steps": a.steps, "seeds": seeds, "per_class": a.per_class,
              "test_per_class": a.test_per_class, "common": COMMON, "method_options": METHOD_OPTIONS, "views": VIEWS,
              "wall_s": wall, "jobs": jobs, "threads_per_job": threads, "summary": table, "runs": results}
    (a.out / "bench_science.json").write_text(json.dumps(report, indent=1))
    (a.out / "bench_science.md").write_text(md)
    return md


if __name__ == "__main__":
    main()
