"""Motion-vector conventions (data_specs/README.md), asserted numerically."""
import av
import numpy as np
import pytest

from motionssl.data_specs import hflip_motion, stored_size
from motionssl.stores import decode
from motionssl.stores.decode import decode_frames, open_video
from motionssl.stores.motion_vectors import ReferenceGaps, pool_motion_vectors
from motionssl.preprocess.synthetic import encode, moving_square_frames, translating_frames

MV_DTYPE = np.dtype([("source", "<i4"), ("w", "u1"), ("h", "u1"), ("src_x", "<i2"), ("src_y", "<i2"),
                     ("dst_x", "<i2"), ("dst_y", "<i2"), ("flags", "<u8"), ("motion_x", "<i4"),
                     ("motion_y", "<i4"), ("motion_scale", "<u2")])


def records(*rows):
    """rows: (source, w, h, dst_x, dst_y, motion_x, motion_y, scale)."""
    out = np.zeros(len(rows), MV_DTYPE)
    for i, (source, w, h, dx, dy, mx, my, scale) in enumerate(rows):
        out[i] = (source, w, h, dx + mx // scale, dy + my // scale, dx, dy, 0, mx, my, scale)
    return out


def pool(recs, past=1, future=1, size=(16, 16), cell=4):
    return pool_motion_vectors(recs, src_size=size, dst_size=size, cell=cell, past_gap=past, future_gap=future)


def test_past_reference_gives_dst_minus_src():
    # Block at (8, 8) came from src = dst + motion/scale = (8 - 3, 8 + 2): content moved (+3, -2).
    mv, valid = pool(records((-1, 16, 16, 8, 8, -12, 8, 4)))
    assert valid.all()
    np.testing.assert_allclose(mv[..., 0], 3.0)
    np.testing.assert_allclose(mv[..., 1], -2.0)


def test_future_reference_is_turned_forward():
    # B-frame block found 3 px to the right in the NEXT frame: content moves +3 px per frame.
    mv, valid = pool(records((1, 16, 16, 8, 8, 12, 0, 4)))
    np.testing.assert_allclose(mv[..., 0], 3.0)
    # Taken "as it comes" (dst - src) the sign would be scrambled:
    assert np.all(mv[..., 0] > 0)


def test_bidirectional_block_is_the_mean_of_both_estimates():
    recs = records((-1, 16, 16, 8, 8, -8, 0, 4), (1, 16, 16, 8, 8, 16, 0, 4))  # +2 and +4
    mv, valid = pool(recs)
    np.testing.assert_allclose(mv[..., 0], 3.0)


def test_reference_gap_divides_the_displacement():
    # A P-frame referring 3 frames back with a 9 px displacement: 3 px per frame.
    mv, _ = pool(records((-1, 16, 16, 8, 8, -36, 0, 4)), past=3)
    np.testing.assert_allclose(mv[..., 0], 3.0)
    mv, _ = pool(records((1, 16, 16, 8, 8, 8, 0, 4)), future=2)
    np.testing.assert_allclose(mv[..., 0], 1.0)


def test_uncovered_cells_are_invalid_and_zero():
    # Only the left 8x16 half is inter-predicted; the right half is intra (exports nothing).
    mv, valid = pool(records((-1, 8, 16, 4, 8, -4, 0, 4)))
    assert valid[:, :2].all() and not valid[:, 2:].any()
    assert np.all(mv[:, 2:] == 0)
    mv, valid = pool(None)
    assert mv.shape == (4, 4, 2) and not valid.any()


def test_pooling_rescales_to_stored_pixels_by_area():
    # 32x32 coded -> 16x16 stored: a 4 px motion is 2 stored px; two blocks average by area.
    recs = records((-1, 16, 32, 8, 16, -16, 0, 4), (-1, 16, 32, 24, 16, -32, 0, 4))  # +4 left, +8 right
    mv, valid = pool_motion_vectors(recs, src_size=(32, 32), dst_size=(16, 16), cell=8,
                                    past_gap=1, future_gap=1)
    np.testing.assert_allclose(mv[..., 0], [[2.0, 4.0], [2.0, 4.0]])
    recs = records((-1, 16, 32, 8, 16, -16, 0, 4), (-1, 16, 32, 24, 16, -32, 0, 4))
    mv, _ = pool_motion_vectors(recs, src_size=(32, 32), dst_size=(16, 16), cell=16, past_gap=1, future_gap=1)
    np.testing.assert_allclose(mv[0, 0, 0], 3.0)  # half the cell at 2, half at 4


def test_reference_gaps_follow_decode_order():
    # Display 0..4 coded as I0 P4 B2 B1 B3 (a B-pyramid): pts in ticks of 10.
    gaps = ReferenceGaps(frame_duration=10)
    for pts in (0, 40, 20, 10, 30):
        gaps.demuxed(pts)
    assert gaps.gaps(40) == (4, 1)      # P4 refers back to I0 (no future side: 1, unused)
    assert gaps.gaps(20) == (2, 2)      # B2 between I0 and P4
    assert gaps.gaps(10) == (1, 1)      # B1 between I0 and B2
    assert gaps.gaps(30) == (1, 1)      # B3 between B2 and P4


def test_broken_timestamps_keep_the_vectors():
    """All-equal pts (a badly muxed file) must not turn every vector into 'no reference'."""
    gaps = ReferenceGaps(frame_duration=10)
    for _ in range(5):
        gaps.demuxed(0)
    past, future = gaps.gaps(0)
    assert (past, future) == (1, 1)
    mv, valid = pool(records((-1, 16, 16, 8, 8, -8, 0, 4)), past=past, future=future)
    assert valid.all() and np.allclose(mv[..., 0], 2.0)


def decode_mv(path, size=(96, 64)):
    container, probe = open_video(path, max_pixels=10**8)
    frames = list(decode_frames(container, probe, size=size, mv_cell=4))
    container.close()
    return probe, frames


@pytest.mark.parametrize("kind,ext", [("x264-nob", ".mp4"), ("x264-b", ".mp4"), ("mpeg4", ".avi")])
@pytest.mark.parametrize("velocity", [(4, 0), (0, -4), (-2, 2)])
def test_known_translation(tmp_path, kind, ext, velocity):
    """Content moving `velocity` coded px/frame reads back as velocity/2 stored px (192x128 -> 96x64)."""
    path = encode(tmp_path / f"v{ext}", translating_frames(24, velocity=velocity), kind)
    probe, frames = decode_mv(path)
    types = "".join(f.frame_type for f in frames)
    if kind == "x264-b":
        assert "B" in types, types
    else:
        assert "B" not in types, types
    expected = np.array(velocity) / 2
    checked = 0
    for f in frames:
        if f.frame_type == "I":
            assert not f.mv_valid.any()
            continue
        v = f.mv_valid
        assert v.mean() > 0.8, (f.index, f.frame_type, v.mean())
        np.testing.assert_allclose(np.median(f.mv[v], axis=0), expected, atol=0.26,
                                   err_msg=f"frame {f.index} ({f.frame_type})")
        checked += 1
    assert checked >= 20


def test_mpeg4_b_frames_are_invalid_not_zero(tmp_path):
    path = encode(tmp_path / "b.avi", translating_frames(16, velocity=(4, 0)), "mpeg4-b")
    _, frames = decode_mv(path)
    b = [f for f in frames if f.frame_type == "B"]
    p = [f for f in frames if f.frame_type == "P"]
    assert b and p
    assert not any(f.mv_valid.any() for f in b)
    p = [f for f in p if f.mv_valid.mean() > 0.5]  # the encoder may code a last P-frame all-intra
    assert len(p) >= 3
    for f in p:  # P-frames three frames after their reference: normalised by the gap
        np.testing.assert_allclose(np.median(f.mv[f.mv_valid], axis=0), [2.0, 0.0], atol=0.26)


def test_x265_has_no_motion_vectors(tmp_path):
    path = encode(tmp_path / "h.mkv", translating_frames(8), "x265")
    probe, frames = decode_mv(path)
    assert probe.codec == "hevc" and not probe.has_mv_export
    assert all(f.mv is None for f in frames)


def test_horizontal_flip_negates_dx(tmp_path):
    frames = translating_frames(16, velocity=(4, 2))
    a = encode(tmp_path / "a.mp4", frames, "x264-b")
    b = encode(tmp_path / "b.mp4", [np.ascontiguousarray(f[:, ::-1]) for f in frames], "x264-b")
    _, fa = decode_mv(a)
    _, fb = decode_mv(b)
    for x, y in zip(fa[1:], fb[1:]):
        flipped, flipped_valid = hflip_motion(x.mv, x.mv_valid)
        both = flipped_valid & y.mv_valid
        np.testing.assert_allclose(np.median(flipped[both], axis=0), np.median(y.mv[both], axis=0), atol=0.26)
        np.testing.assert_allclose(np.median(y.mv[both], axis=0), [-2.0, 1.0], atol=0.26)


def naive_pool(records, *, src_size, dst_size, cell, past_gap, future_gap):
    """Reference pooling in float64: every coded pixel takes the mean vector of the blocks covering
    it (block edges snapped outwards to the 4-px grid), then stored cells average pixels by overlap."""
    (sw, sh), (dw, dh) = src_size, dst_size
    count, sums = np.zeros((sh, sw)), np.zeros((sh, sw, 2))
    for r in records if records is not None else []:
        if (r["source"] < 0 and past_gap is None) or (r["source"] > 0 and future_gap is None):
            continue
        gap = past_gap if r["source"] < 0 else -future_gap
        v = -np.array([r["motion_x"] * dw / sw, r["motion_y"] * dh / sh]) / (int(r["motion_scale"]) * gap)
        x, y, hw, hh = int(r["dst_x"]), int(r["dst_y"]), int(r["w"]) // 2, int(r["h"]) // 2
        rows = slice(max(0, (y - hh) // 4 * 4), max(0, -(-(y + hh) // 4) * 4))
        cols = slice(max(0, (x - hw) // 4 * 4), max(0, -(-(x + hw) // 4) * 4))
        count[rows, cols] += 1
        sums[rows, cols] += v

    def overlap(coded, stored):  # (coded pixels, cells): stored-pixel overlap of each pixel with each cell
        lo = np.arange(coded)[:, None] * stored / coded
        edges = np.minimum(np.arange(0, stored + cell, cell), stored)[: -(-stored // cell) + 1]
        return np.clip(np.minimum(lo + stored / coded, edges[1:]) - np.maximum(lo, edges[:-1]), 0, None)

    oy, ox = overlap(sh, dh), overlap(sw, dw)
    covered = count > 0
    coverage = oy.T @ covered @ ox
    mean = sums / np.maximum(count, 1)[..., None]
    pooled = np.stack([oy.T @ mean[..., k] @ ox for k in range(2)], axis=-1)
    valid = coverage >= 0.5 * np.outer(oy.sum(0), ox.sum(0)) - 1e-4
    return np.where(valid[..., None], pooled / np.where(valid, coverage, 1)[..., None], 0.0), valid


def recorded_pooling(monkeypatch, path, size, every=1):
    """(kwargs, records, result) of the pooling calls made while decoding `path` (every `every`-th frame)."""
    calls = []

    def spy(records, **kw):
        out = pool_motion_vectors(records, **kw)
        calls.append((kw, records, out))
        return out

    monkeypatch.setattr(decode, "pool_motion_vectors", spy)
    container, probe = open_video(path, max_pixels=10**8)
    for _ in decode_frames(container, probe, size=size, mv_cell=4):
        pass
    container.close()
    return calls[::every]


def real_and_b_frame_videos(clips, tmp_path):
    yield from ((p, stored_size(*av_size(p), 128), 10) for p in clips.values())
    for kind in ("x264-b", "mpeg4"):
        path = encode(tmp_path / f"{kind}.mp4", translating_frames(16, velocity=(3, -2)), kind)
        yield path, (96, 64), 1
    yield encode(tmp_path / "square.mp4", moving_square_frames(16, velocity=(3, 1)), "x264-b"), (96, 64), 1


def av_size(path):
    with av.open(str(path)) as c:
        return c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height


def test_pooling_matches_a_per_pixel_reference(clips, tmp_path, monkeypatch):
    """Real H.264 (B-frames, 16x16 to 8x8 partitions) and synthetic B-frame/MPEG-4 clips, every
    block of every checked frame: equal to a float64 per-pixel reference to 1e-5."""
    checked = 0
    for path, size, every in real_and_b_frame_videos(clips, tmp_path):
        for kw, records, (mv, valid) in recorded_pooling(monkeypatch, path, size, every):
            ref_mv, ref_valid = naive_pool(records, **kw)
            np.testing.assert_array_equal(valid, ref_valid, err_msg=str(path))
            np.testing.assert_allclose(mv, ref_mv, rtol=1e-5, atol=1e-5, err_msg=str(path))
            checked += records is not None
    assert checked > 100


def test_unaligned_and_large_blocks_match_the_reference():
    """Blocks off the 8-px grid and larger than a macroblock (not from FFmpeg) snap to 4-px units."""
    rng = np.random.default_rng(0)
    rows = [(int(rng.choice([-1, 1])), int(rng.choice([4, 8, 12, 16, 32])), int(rng.choice([4, 8, 16, 24])),
             int(rng.integers(-4, 110)), int(rng.integers(-4, 70)), int(rng.integers(-40, 40)),
             int(rng.integers(-40, 40)), 4) for _ in range(60)]
    recs = records(*rows)
    for past, future in ((1, 2), (3, None), (None, 1)):
        kw = dict(src_size=(106, 66), dst_size=(80, 50), cell=4, past_gap=past, future_gap=future)
        mv, valid = pool_motion_vectors(recs, **kw)
        ref_mv, ref_valid = naive_pool(recs, **kw)
        np.testing.assert_array_equal(valid, ref_valid)
        np.testing.assert_allclose(mv, ref_mv, rtol=1e-5, atol=1e-5)
        assert valid.mean() > 0.3
