"""`motionssl evaluate`: retrieval (pretrain or finetune checkpoints) and classification (finetune checkpoints).

Each writes NAME.json, NAME.md (a Markdown table) and its pictures into the output directory, and returns the JSON.
Clip length, stride and crop size default to the checkpoint's training config.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from motionssl.train.features import clip_dataset, clip_outputs, load_backbone
from motionssl.train.finetune import load_stream_classifiers
from motionssl.eval.metrics import (
    RECALL_KS, average_clip_probabilities, confusion_matrix, retrieval, retrieval_features, softmax, topk_accuracy,
)
from motionssl.pictures import write_png
from motionssl.pictures.figures import confusion_image, recall_curve, retrieval_grid
from motionssl.train.labels import load_split
from motionssl.train.methods.cmd import cmd_network
from motionssl.train.methods.mvcgc import MVInput, mv_encoder
from motionssl.stores import open_store


@dataclass(frozen=True)
class Protocol:
    views: int = 10                 # evenly spaced clips per video
    clip_len: int | None = None     # None: the checkpoint's
    stride: int | None = None
    size: int | None = None
    batch_size: int = 8
    workers: int = 0
    crops: int = 1                  # short-side squares per clip along the long side (3: the 10 x 3 views protocol)

    def settled(self, config: dict) -> "Protocol":
        return dataclasses.replace(self, **{k: getattr(self, k) or config[k] for k in ("clip_len", "stride", "size")})


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _outputs(model, store, videos, labels, p: Protocol, modality: str = "rgb") -> np.ndarray:
    ds = clip_dataset(store, videos, labels, clip_len=p.clip_len, stride=p.stride, size=p.size, views=p.views,
                      crops=p.crops, modalities=(modality,))
    return clip_outputs(model, ds, batch_size=p.batch_size, workers=p.workers, device=_device(), modality=modality)


def _table(header: Sequence[str], row: Sequence[str]) -> str:
    return "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n| " + " | ".join(row) + " |\n"


def evaluate_retrieval(checkpoint: Path, store_path: Path, labels: Sequence[Path], out: Path, *, split: int = 1,
                       protocol: Protocol = Protocol(), ks: Sequence[int] = RECALL_KS, network: str = "v",
                       stream: str = "rgb") -> dict:
    """Backbone features (no projection head) of the test videos query those of the train videos (CoCLR).

    `network` v is the checkpoint's backbone (CMD's V-network); i and m are a CMD checkpoint's I-network (on single
    frames) and M-network (on `future_frames` motion vectors) instead (paper 000 Table 5). `stream` mv is an MVCGC
    checkpoint's MV encoder on the store's motion vectors, both the two streams by late fusion: each stream's
    features prepared (averaged, centred, L2-normalised) and concatenated, i.e. the mean of their cosine
    similarities (paper 003 Table 5)."""
    backbone, payload, _ = load_backbone(checkpoint)
    streams = [(backbone, "rgb")]
    if (payload["config"].get("method_options") or {}).get("stream") == "mv":  # a `finetune --stream mv` run
        streams = [(MVInput(backbone, size=payload["config"]["size"], clamp=payload["backbone"].get("mv_clamp", 10.0)),
                    "mv")]
    if network != "v" and stream != "rgb":
        raise ValueError("--network picks a CMD network and --stream an MVCGC stream: give one of them")
    if network != "v":
        backbone, needs = cmd_network(payload, network, source=str(checkpoint))
        streams = [(backbone, needs.pop("modality"))]
        protocol = dataclasses.replace(protocol, **{k: getattr(protocol, k) or v for k, v in needs.items()})
    if stream in ("mv", "both"):
        mv, spec = mv_encoder(payload, source=str(checkpoint))
        mv_stream = (MVInput(mv, size=spec["size"], clamp=spec["mv_clamp"]), "mv")
        streams = [mv_stream] if stream == "mv" else streams + [mv_stream]
    p = protocol.settled(payload["config"])
    store = open_store(store_path)
    s = load_split(labels, store.videos, split=split)
    (train, ytrain), (test, ytest) = s.part("train"), s.part("test")

    def features(videos, y):
        outs = [_outputs(model, store, videos, y, p, modality) for model, modality in streams]
        return outs[0] if len(outs) == 1 else np.concatenate([retrieval_features(o) for o in outs], axis=1)

    recall, neighbours = retrieval(features(train, ytrain), ytrain, features(test, ytest), ytest, ks)
    out.mkdir(parents=True, exist_ok=True)
    pictures = {"recall_curve": write_png(recall_curve(recall), out / "recall_at_k.png"),
                "retrieval_grid": write_png(retrieval_grid(store, test, ytest, neighbours, train, ytrain, s.classes),
                                            out / "retrieval_grid.png")}
    result = {"protocol": "retrieval", "checkpoint": str(checkpoint), "store": str(store_path),
              "backbone": payload["backbone"]["name"], "network": network, "stream": stream, "queries": len(test),
              "gallery": len(train),
              "classes": len(s.classes), "recall": {f"R@{k}": v for k, v in recall.items()},
              "clip_len": p.clip_len, "stride": p.stride, "size": p.size, "views": p.views, "crops": p.crops,
              "pictures": {k: str(v) for k, v in pictures.items()},
              "neighbours": {test[q]: [train[n] for n in neighbours[q, :5]] for q in range(len(test))}}
    (out / "retrieval.json").write_text(json.dumps(result, indent=1))
    table = _table(["checkpoint", "queries", "gallery", *result["recall"]],
                   [str(checkpoint), str(len(test)), str(len(train)), *(f"{100 * v:.1f}" for v in recall.values())])
    (out / "retrieval.md").write_text(table)
    result["table"] = table
    return result


def evaluate_classification(checkpoint: Path, store_path: Path, labels: Sequence[Path], out: Path, *,
                            split: int = 1, protocol: Protocol = Protocol(), stream: str | None = None) -> dict:
    """Top-1 / top-5 accuracy of the softmax probabilities averaged over each test video's clips, and over the
    streams (`stream` both of a `finetune --stream both` run: late fusion, paper 003 Table 4's R+MV; None: the
    stream the run was fine-tuned on)."""
    streams, payload = load_stream_classifiers(checkpoint, stream)
    p = protocol.settled(payload["config"])
    store = open_store(store_path)
    s = load_split(labels, store.videos, split=split)
    num_classes = payload["method"]["model.head.weight"].shape[0]
    if num_classes != len(s.classes):
        raise ValueError(f"{checkpoint} classifies {num_classes} classes, the labels have {len(s.classes)}")
    test, ytest = s.part("test")
    logits = np.concatenate([_outputs(model, store, test, ytest, p, modality) for model, modality in streams], axis=1)
    if (payload["config"].get("method_options") or {}).get("classifier") == "svm":
        probs = softmax(logits.mean(axis=1))  # the SVM on the mean feature: its decision values averaged
    else:
        probs = average_clip_probabilities(logits)
    ks = [k for k in (1, 5) if k <= num_classes]
    accuracy = topk_accuracy(probs, np.array(ytest), ks)
    matrix = confusion_matrix(probs.argmax(1), np.array(ytest), num_classes)
    out.mkdir(parents=True, exist_ok=True)
    picture = write_png(confusion_image(matrix, s.classes), out / "confusion.png")
    result = {"protocol": "classification", "checkpoint": str(checkpoint), "store": str(store_path),
              "videos": len(test), "classes": list(s.classes), "accuracy": {f"top{k}": v for k, v in accuracy.items()},
              "streams": [modality for _, modality in streams],
              "clip_len": p.clip_len, "stride": p.stride, "size": p.size, "views": p.views, "crops": p.crops,
              "confusion": matrix.tolist(), "pictures": {"confusion": str(picture)}}
    (out / "classification.json").write_text(json.dumps(result, indent=1))
    table = _table(["checkpoint", "videos", *result["accuracy"]],
                   [str(checkpoint), str(len(test)), *(f"{100 * v:.1f}" for v in accuracy.values())])
    (out / "classification.md").write_text(table)
    result["table"] = table
    return result
