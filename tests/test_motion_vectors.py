"""Motion-vector conventions (data_specs/README.md), asserted numerically."""
import numpy as np
import pytest

from motionssl.data_specs import hflip_motion
from motionssl.preprocess.decode import decode_frames, open_video
from motionssl.preprocess.motion_vectors import ReferenceGaps, pool_motion_vectors
from motionssl.preprocess.synthetic import encode, translating_frames

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
