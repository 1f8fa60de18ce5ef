"""Metrics on hand-made inputs with known answers, and against naive loops."""
import math

import numpy as np
import pytest

from motionssl.eval.metrics import (
    average_clip_probabilities, confusion_matrix, nearest_neighbours, retrieval, retrieval_features, topk_accuracy,
)

# A zero-mean gallery on the axes, one class each, and four queries near them (also zero-mean).
GALLERY = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], float)
GALLERY_LABELS = np.array([0, 1, 2, 3])
QUERIES = np.array([[1, .2], [-1, -.2], [.2, -1], [-.2, 1]])
QUERY_LABELS = np.array([0, 0, 3, 2])  # query 1 lies nearest class 1; its own class 0 is ranked last


def test_retrieval_known_answer():
    recall, neighbours = retrieval(GALLERY, GALLERY_LABELS, QUERIES, QUERY_LABELS, ks=(1, 2, 3, 4))
    assert recall == {1: .75, 2: .75, 3: .75, 4: 1.0}
    np.testing.assert_array_equal(neighbours, [[0, 2, 3, 1], [1, 3, 2, 0], [3, 0, 1, 2], [2, 1, 0, 3]])


def test_retrieval_centres_each_set_and_averages_clips():
    """An offset per set and a scale per set change nothing; clip features are averaged first."""
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(4, 3, 2)) * .05
    noise -= noise.mean(axis=1, keepdims=True)  # three clips per video whose mean is the point itself
    gallery_clips = (GALLERY[:, None] + noise) * 7 + np.array([50, -20])
    query_clips = QUERIES[:, None] * 3 + np.array([-9, 4])
    query_clips = np.repeat(query_clips, 2, axis=1)
    recall, _ = retrieval(gallery_clips, GALLERY_LABELS, query_clips, QUERY_LABELS, ks=(1, 4))
    assert recall == {1: .75, 4: 1.0}
    # without centring, the offsets dominate the cosine and R@1 drops
    raw = nearest_neighbours(query_clips.mean(1) / np.linalg.norm(query_clips.mean(1), axis=1, keepdims=True),
                             gallery_clips.mean(1) / np.linalg.norm(gallery_clips.mean(1), axis=1, keepdims=True), 1)
    assert (GALLERY_LABELS[raw[:, 0]] == QUERY_LABELS).mean() == .5


def test_retrieval_against_naive_loops():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(30, 10, 8)), rng.normal(size=(12, 10, 8))
    ytrain, ytest = rng.integers(0, 4, 30), rng.integers(0, 4, 12)
    ks = (1, 5, 10, 20, 50)
    recall, _ = retrieval(train, ytrain, test, ytest, ks=ks)

    def prepare(f):
        videos = [[sum(clip[d] for clip in video) / len(video) for d in range(8)] for video in f]
        mean = [sum(v[d] for v in videos) / len(videos) for d in range(8)]
        centred = [[v[d] - mean[d] for d in range(8)] for v in videos]
        return [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in centred]

    g, q = prepare(train), prepare(test)
    for k in ks:
        hits = 0
        for qi, qv in enumerate(q):
            sims = sorted(((sum(a * b for a, b in zip(qv, gv)), gi) for gi, gv in enumerate(g)), reverse=True)
            hits += any(ytrain[gi] == ytest[qi] for _, gi in sims[:k])
        assert recall[k] == pytest.approx(hits / len(q)), k
    assert recall[50] == 1.0 and recall[1] <= recall[5] <= recall[10]
    np.testing.assert_allclose(np.linalg.norm(retrieval_features(train), axis=1), 1)


def test_multi_clip_averaging_averages_probabilities_not_logits():
    assert average_clip_probabilities(np.log([[[1, 3], [1, 1]]])) == pytest.approx(np.array([[.375, .625]]))
    # one confident clip for class 1 against two milder ones for class 0
    logits = np.array([[[0, 30], [2, 0], [2, 0]]], float)
    probs = average_clip_probabilities(logits)
    s = 1 / (1 + math.exp(-2))
    assert probs[0] == pytest.approx([2 * s / 3, (1 + 2 * (1 - s)) / 3], abs=1e-9)
    assert probs.argmax() == 0 and logits.mean(axis=1).argmax() == 1


def test_topk_accuracy_and_confusion():
    scores = np.array([[.1, .5, .3, .1], [.6, .1, .2, .1], [.2, .2, .5, .1], [.1, .2, .3, .4]])
    labels = np.array([1, 2, 0, 0])
    acc = topk_accuracy(scores, labels, ks=(1, 2, 3, 4))
    assert acc == {1: .25, 2: .75, 3: .75, 4: 1.0}  # row 3's label has the lowest score
    cm = confusion_matrix(scores.argmax(1), labels, 4)
    assert cm.tolist() == [[0, 0, 1, 1], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert cm.sum() == 4 and np.trace(cm) / cm.sum() == acc[1]
