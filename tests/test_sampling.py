"""Clip sampling: which frames a clip reads."""
import numpy as np
import pytest

from motionssl.train.sampling import candidate_starts, clip_span, evenly_spaced_clips, random_clip


def test_random_clip_is_strided_and_starts_uniformly():
    rng = np.random.default_rng(0)
    starts = []
    for _ in range(4000):
        idx = random_clip(40, 8, 3, rng)
        assert idx.dtype == np.int64 and idx.shape == (8,)
        np.testing.assert_array_equal(np.diff(idx), 3)
        assert idx[-1] <= 39
        starts.append(idx[0])
    counts = np.bincount(starts, minlength=40)
    assert clip_span(8, 3) == 22
    assert counts[19:].sum() == 0 and (counts[:19] > 0).all()  # every start of a clip that fits, 0..18
    expected = 4000 / 19
    assert ((counts[:19] - expected) ** 2 / expected).sum() < 45  # chi-square, 18 dof: p < 1e-3 above 42.3


def test_short_video_clamps_to_the_last_frame():
    rng = np.random.default_rng(1)
    for _ in range(20):  # only start 0 exists
        np.testing.assert_array_equal(random_clip(6, 4, 3, rng), [0, 3, 5, 5])
    np.testing.assert_array_equal(random_clip(1, 3, 2, rng), [0, 0, 0])
    np.testing.assert_array_equal(evenly_spaced_clips(6, 4, 3, 2), [[0, 3, 5, 5], [0, 3, 5, 5]])
    np.testing.assert_array_equal(candidate_starts(6, 4, 3), [0])


def test_a_clip_that_exactly_fits_has_one_start():
    rng = np.random.default_rng(2)
    np.testing.assert_array_equal(random_clip(7, 4, 2, rng), [0, 2, 4, 6])
    np.testing.assert_array_equal(candidate_starts(7, 4, 2), [0])


def test_evenly_spaced_clips_span_the_video():
    clips = evenly_spaced_clips(100, 16, 2, 5)  # span 31, last start 69
    assert clips.shape == (5, 16) and clips.dtype == np.int64
    np.testing.assert_array_equal(clips[:, 0], [0, 17, 34, 52, 69])
    np.testing.assert_array_equal(clips - clips[:, :1], np.broadcast_to(2 * np.arange(16), (5, 16)))
    np.testing.assert_array_equal(evenly_spaced_clips(100, 16, 2, 1)[0, 0], 34)  # the centre clip
    np.testing.assert_array_equal(evenly_spaced_clips(100, 16, 2, 5), clips)  # deterministic


def test_candidate_starts():
    np.testing.assert_array_equal(candidate_starts(20, 4, 2), [0, 2, 4, 6, 8, 10, 12])  # last start 13
    np.testing.assert_array_equal(candidate_starts(20, 4, 2, step=5), [0, 5, 10])
    np.testing.assert_array_equal(candidate_starts(20, 4, 1, step=1), np.arange(17))


def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        random_clip(10, 0, 1, rng)
    with pytest.raises(ValueError):
        random_clip(10, 4, 0, rng)
    with pytest.raises(ValueError):
        random_clip(0, 4, 1, rng)
    with pytest.raises(ValueError):
        candidate_starts(10, 2, 1, step=0)
