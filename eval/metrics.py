"""Evaluation metrics as pure NumPy functions: top-k accuracy, multi-clip averaging, retrieval R@k, confusion.

Retrieval follows CoCLR's `test_retrieval`: clip features averaged per video, each set (train, test) centred on its
own mean and L2-normalised, test videos query the train videos by cosine similarity, and a query is a hit at k when
any of its k nearest train videos has its label.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_KS = (1, 5, 10, 20, 50)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def average_clip_probabilities(clip_logits: np.ndarray) -> np.ndarray:
    """(N, V, C) logits of V clips (or clips x crops) per video -> (N, C) mean of their softmax probabilities."""
    if clip_logits.ndim != 3:
        raise ValueError(f"expected (videos, clips, classes) logits, got shape {clip_logits.shape}")
    return softmax(clip_logits.astype(np.float64)).mean(axis=1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest scores; ties broken by class index (lowest first)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = order == np.asarray(labels)[:, None]
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
    return m


def retrieval_features(features: np.ndarray) -> np.ndarray:
    """(N, D) or (N, V, D) clip features -> (N, D): clips averaged, centred on the set's mean, L2-normalised."""
    x = features.astype(np.float64)
    if x.ndim == 3:
        x = x.mean(axis=1)
    x = x - x.mean(axis=0, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    """(Nq, min(k, Ng)) gallery indices by decreasing cosine similarity of prepared features (ties: lower index)."""
    similarity = queries @ gallery.T
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def recall_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray,
                ks: Sequence[int] = RECALL_KS) -> dict[int, float]:
    """R@k from the labels of each query's ranked neighbours (Nq, K): any of the first k matches the query.
    A k beyond the gallery size counts the whole gallery."""
    hits = neighbour_labels == np.asarray(query_labels)[:, None]
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def retrieval(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
              test_labels: np.ndarray, ks: Sequence[int] = RECALL_KS) -> tuple[dict[int, float], np.ndarray]:
    """CoCLR's protocol (see the module docstring). Returns R@k and the (Ntest, max k) ranked train indices."""
    neighbours = nearest_neighbours(retrieval_features(test_features), retrieval_features(train_features), max(ks))
    return recall_at_k(np.asarray(train_labels)[neighbours], test_labels, ks), neighbours
