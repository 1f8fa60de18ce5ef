"""A tiny end-to-end run on the motion-classes set: extract, pretrain, finetune (cached linear probe, full with
resume), evaluate retrieve and classify, plot. Commands run in-process through Typer's runner."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from motionssl.cli import app
from motionssl.train.features import clip_dataset, clip_outputs, load_backbone
from motionssl.eval.metrics import retrieval
from motionssl.train.labels import load_split
from motionssl.preprocess.motion_classes import DIRECTIONS, write_motion_classes
from motionssl.stores import open_store
from motionssl.train import checkpoint
from motionssl.train.run_log import read_log
from conftest import TINY_SPEC

TINY = ["--backbone", "r3d10", "--backbone-width", "4", "--clip-len", "4", "--stride", "2", "--size", "32"]


def cli(*args) -> str:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    labels = write_motion_classes(root / "videos", per_class=4, test_per_class=2, frames=16)
    store = root / "store.zarr"
    cli("extract", root / "videos", "-o", store, "--spec", write_spec(root), "--workers", 1, "--no-progress")
    pre = root / "pretrain"
    cli("pretrain", store, "-o", pre, *TINY, "--option", "hidden=16", "--option", "dim=8",
        "--option", "queue_size=8", "--steps", 2, "--batch-size", 4, "--workers", 0, "--no-progress")
    return {"root": root, "labels": labels, "store": store, "pretrain": pre / "checkpoint.pt"}


def write_spec(root: Path) -> Path:
    import yaml

    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SPEC))
    return path


def test_motion_classes_differ_only_in_motion(chain):
    store = open_store(chain["store"])
    assert len(store.videos) == 4 * len(DIRECTIONS)
    split = load_split([chain["labels"]], store.videos)
    assert split.classes == tuple(sorted(DIRECTIONS)) and len(split.train) == len(split.test) == 8
    # the mean frame colour is drawn independently of the class: the class means overlap
    means = {c: [store.read_at(v, "rgb", [0])[0].mean() for v, y in split.train.items() if split.classes[y] == c]
             for c in split.classes}
    spread = np.std([np.mean(m) for m in means.values()])
    assert spread < np.mean([np.std(m) for m in means.values()]) * 2
    # the motion vectors point the class's way (x264 mv: forward motion in stored px)
    vid = next(v for v, y in split.train.items() if split.classes[y] == "up")
    mv, valid = store.read(vid, "mv"), store.read(vid, "mv_valid")
    moving = valid & (np.abs(mv).sum(-1) > 0.5)
    assert np.median(mv[moving][:, 1]) < 0 and abs(np.median(mv[moving][:, 0])) < 0.5


def test_retrieval_report_matches_a_recomputation(chain):
    out = chain["root"] / "retrieval"
    text = cli("evaluate", "retrieve", "--checkpoint", chain["pretrain"], chain["store"],
               "--labels", chain["labels"], "-o", out, "--views", 3)
    assert "| R@1 | R@5 | R@10 | R@20 | R@50 |" in text and str(out / "retrieval_grid.png") in text
    result = json.loads((out / "retrieval.json").read_text())
    assert result["queries"] == 8 and result["gallery"] == 8 and result["views"] == 3 and result["clip_len"] == 4
    backbone, _, _ = load_backbone(chain["pretrain"])
    store = open_store(chain["store"])
    split = load_split([chain["labels"]], store.videos)
    feats = {p: clip_outputs(backbone, clip_dataset(store, *split.part(p), clip_len=4, stride=2, size=32, views=3))
             for p in ("train", "test")}
    assert feats["test"].shape == (8, 3, backbone.out_dim)
    recall, _ = retrieval(feats["train"], split.part("train")[1], feats["test"], split.part("test")[1])
    assert result["recall"] == {f"R@{k}": v for k, v in recall.items()}
    assert result["recall"]["R@10"] == 1.0  # 8 gallery videos cover every class
    grid, curve = cv2.imread(str(out / "retrieval_grid.png")), cv2.imread(str(out / "recall_at_k.png"))
    assert grid.shape[0] > 8 * 64 and grid.shape[1] > 6 * 64 and curve.shape == (300, 420, 3)
    assert ((grid[..., 1] > 140) & (grid[..., 2] < 90)).any()  # green borders: some neighbours share the class
    assert (out / "retrieval.md").read_text().count("\n|---") == 1


def test_linear_probe_on_cached_features_then_classify(chain):
    run, out = chain["root"] / "linear", chain["root"] / "classify"
    cli("finetune", "--checkpoint", chain["pretrain"], chain["store"], "--labels", chain["labels"],
        "-o", run, "--linear-probe", "--cached-features", "--views", 2, "--steps", 40, "--lr", 0.05,
        "--log-every", 10, "--workers", 0)
    log = read_log(run)
    assert [r["step"] for r in log] == [10, 20, 30, 40] and log[-1]["loss"] < log[0]["loss"]
    state = checkpoint.load(run / "checkpoint.pt")
    _, pretrained, _ = load_backbone(chain["pretrain"])
    assert all(np.array_equal(v, state["backbone"]["state_dict"][k])  # cached path: the backbone is untouched
               for k, v in pretrained["backbone"]["state_dict"].items())
    text = cli("evaluate", "classify", "--checkpoint", run / "checkpoint.pt", chain["store"],
               "--labels", chain["labels"], "-o", out, "--views", 2)
    result = json.loads((out / "classification.json").read_text())
    matrix = np.array(result["confusion"])
    assert matrix.shape == (4, 4) and matrix.sum() == 8 and (matrix.sum(1) == 2).all()
    assert result["accuracy"]["top1"] == np.trace(matrix) / 8 and "top5" not in result["accuracy"]  # 4 classes
    assert f"| {100 * result['accuracy']['top1']:.1f} |" in text
    assert cv2.imread(str(out / "confusion.png")).shape[0] > 300
    cli("evaluate", "classify", "--checkpoint", run / "checkpoint.pt", chain["store"],
        "--labels", chain["labels"], "-o", out / "crops", "--views", 2, "--crops", 3)
    three = json.loads((out / "crops" / "classification.json").read_text())
    assert (three["views"], three["crops"], np.array(three["confusion"]).sum()) == (2, 3, 8)


def test_full_finetune_resumes_and_plot_overlays(chain):
    run = chain["root"] / "full"
    common = [chain["store"], "--labels", chain["labels"], "-o", run, "--steps", 4, "--batch-size", 4,
              "--workers", 0, "--log-every", 1, "--no-progress"]
    assert "halted at step 2 of 4" in cli("finetune", "--checkpoint", chain["pretrain"], *common, "--halt-after", 2)
    assert "finished" in cli("finetune", *common, "--resume", "auto")
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4]
    state = checkpoint.load(run / "checkpoint.pt")
    assert state["step"] == 4 and state["method"]["model.head.weight"].shape == (4, 32)
    assert state["config"]["method_options"]["labels"] == [str(chain["labels"])]
    assert (state["config"]["clip_len"], state["config"]["size"]) == (4, 32)  # the pretrain run's, not the defaults
    png = chain["root"] / "compare.png"
    cli("plot", chain["root"] / "pretrain", run, chain["root"] / "linear", "-o", png)
    image = cv2.imread(str(png))
    assert image.shape[1] == 4 * 480  # loss, lr, clips_per_s, acc
    assert (np.abs(image.astype(int) - (180, 119, 31)).sum(-1) < 30).any()  # the first run's colour, #1f77b4 (BGR)


def test_errors_are_one_line(chain, tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("video_id,label,split\nright/right_000,right,train\nsideways/s_000,sideways,test\n")
    r = CliRunner().invoke(app, ["evaluate", "retrieve", "--checkpoint", str(chain["pretrain"]), 
                                 str(chain["store"]), "--labels", str(bad), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "1 of the videos in csv labels" in r.output and "sideways/s_000" in r.output
    r = CliRunner().invoke(app, ["evaluate", "classify", "--checkpoint", str(chain["pretrain"]), 
                                 str(chain["store"]), "--labels", str(chain["labels"]), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "is not a finetune checkpoint" in r.output
    r = CliRunner().invoke(app, ["finetune", str(chain["store"]), "--labels", str(chain["labels"]),
                                 "-o", str(tmp_path / "f"), "--steps", "1", "--batch-size", "4"])
    assert r.exit_code == 2 and "pass --checkpoint CKPT" in r.output
    r = CliRunner().invoke(app, ["finetune", "--aux-motion", "-0.2", "-o", str(tmp_path / "f")])
    assert r.exit_code == 2 and "--aux-motion" in r.output  # a weight >= 0 (tests/test_cmd.py runs it)


# -- MCL's linear protocol: a linear SVM on frozen video-level features ------------------------------------------

@pytest.mark.parametrize("classes", [2, 3])
def test_fit_svm_writes_the_svms_decision_function_into_the_linear_head(classes):
    import torch
    from sklearn.svm import LinearSVC

    from motionssl.train.finetune import fit_svm

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), 10)
    x = rng.normal(size=(len(y), 6)) * [1, 5, 0.1, 1, 1, 0] + 3 * np.eye(6)[y] + [0, 0, 0, 0, 0, 2]
    head = torch.nn.Linear(6, classes + 1).double()                # one class never seen: never predicted
    fitted = fit_svm(head, torch.tensor(x), torch.tensor(y), c=0.5)
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1
    reference = LinearSVC(C=0.5, max_iter=10000).fit((x - mean) / std, y)
    decision = reference.decision_function((x - mean) / std)
    with torch.no_grad():
        scores = head(torch.tensor(x)).numpy()
    if classes == 2:
        np.testing.assert_allclose(scores[:, 1] - scores[:, 0], decision, atol=1e-8)
    else:
        np.testing.assert_allclose(scores[:, :classes], decision, atol=1e-8)
    assert (scores.argmax(1) == reference.predict((x - mean) / std)).all() and scores[:, classes].max() < -1e3
    assert fitted["acc"] == (reference.predict((x - mean) / std) == y).mean() and fitted["loss"] >= 0


def test_linear_probe_with_an_svm_then_classify(chain):
    run, out = chain["root"] / "svm", chain["root"] / "classify-svm"
    cli("finetune", "--checkpoint", chain["pretrain"], chain["store"], "--labels", chain["labels"],
        "-o", run, "--linear-probe", "--classifier", "svm", "--views", 2, "--workers", 0)
    state = checkpoint.load(run / "checkpoint.pt")
    assert state["config"]["method_options"]["classifier"] == "svm" and len(read_log(run)) == 1
    # the head is the SVM fitted on each training video's mean clip feature
    from sklearn.svm import LinearSVC

    backbone, _, _ = load_backbone(chain["pretrain"])
    store = open_store(chain["store"])
    split = load_split([chain["labels"]], store.videos)
    videos, labels = split.part("train")
    x = clip_outputs(backbone, clip_dataset(store, videos, labels, clip_len=4, stride=2, size=32, views=2)).mean(1)
    mean, std = x.astype(np.float64).mean(0), x.astype(np.float64).std(0)
    std[std == 0] = 1
    reference = LinearSVC(C=1.0, max_iter=10000).fit((x - mean) / std, labels)
    w = state["method"]["model.head.weight"].double().numpy()
    b = state["method"]["model.head.bias"].double().numpy()
    np.testing.assert_allclose(x @ w.T + b, reference.decision_function((x - mean) / std), rtol=1e-4, atol=1e-4)
    cli("evaluate", "classify", "--checkpoint", run / "checkpoint.pt", chain["store"], "--labels", chain["labels"],
        "-o", out, "--views", 2)
    result = json.loads((out / "classification.json").read_text())
    test_videos, test_labels = split.part("test")
    xt = clip_outputs(backbone, clip_dataset(store, test_videos, test_labels, clip_len=4, stride=2, size=32,
                                             views=2)).mean(1)
    predicted = reference.predict((xt - mean) / std)
    assert result["accuracy"]["top1"] == pytest.approx((predicted == np.array(test_labels)).mean())
    r = CliRunner().invoke(app, [str(a) for a in ("finetune", "--checkpoint", chain["pretrain"], chain["store"],
                                                  "--labels", chain["labels"], "-o", chain["root"] / "svm-bad",
                                                  "--classifier", "svm")])
    assert r.exit_code == 2 and "--classifier svm needs --linear-probe" in r.output
