"""Property tests (hypothesis): the store round trip, motion-vector rasterisation invariants, the clip sampler.

Example counts are small so the file stays fast; each property still runs on fresh random cases every time.
"""
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import TINY_SPEC
from motionssl.data_specs import hflip_motion, spec_from_dict
from motionssl.stores.motion_vectors import pool_motion_vectors
from motionssl.stores import init_store, make_writer, open_store, write_index
from motionssl.train.sampling import candidate_starts, clip_at, clip_span, evenly_spaced_clips, random_clip
from test_motion_vectors import MV_DTYPE

# Every dtype the extractor writes (uint8 images and quantised maps, int32 indices, float16 motion, float64 pts,
# bool masks), plus float32 and int16, which a spec's flow options or later modalities may use.
DTYPES = [np.uint8, np.int16, np.int32, np.float16, np.float32, np.float64, np.bool_]


@st.composite
def stored_arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    frame_shape = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=3)))
    frames = draw(st.integers(1, 40))
    data = draw(hnp.arrays(dtype, (frames, *frame_shape)))  # floats include NaN, inf, -0 and subnormals
    chunk = draw(st.integers(1, 6))
    return data, chunk, chunk * draw(st.integers(1, 4))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=stored_arrays(), fmt=st.sampled_from(["zarr", "hdf5"]), compression=st.sampled_from(["a", "b", "c"]),
       picks=st.lists(st.integers(0, 10**6), max_size=12), bounds=st.tuples(st.integers(0, 40), st.integers(0, 40)))
def test_store_round_trip_is_bit_exact(case, fmt, compression, picks, bounds):
    """Whatever is written through a video writer reads back bit for bit, sliced and gathered, on both backends."""
    data, chunk, shard = case
    storage = {"chunk_frames": chunk, "shard_frames": shard,
               **({"zarr_codec": {"a": "zstd", "b": "lz4", "c": "blosclz"}[compression]} if fmt == "zarr"
                  else {"hdf5_compression": {"a": "lzf", "b": "gzip", "c": "blosc"}[compression]})}
    spec = spec_from_dict({**TINY_SPEC, "modalities": ["rgb"], "storage": storage})
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "s"
        init_store(root, fmt, spec)
        w = make_writer(root, fmt, "v", spec)
        w.add_array("x", data.shape[1:], data.dtype, chunk=chunk, shard=shard)
        for frame in data:
            w.append("x", frame)
        w.commit({"id": "v", "frames": len(data)})
        write_index(root, {"v": {"id": "v", "frames": len(data)}})
        store = open_store(root)
        assert store.arrays("v")["x"] == (data.shape, data.dtype)
        np.testing.assert_array_equal(store.read("v", "x").view(np.uint8), data.view(np.uint8))
        lo, hi = sorted(min(b, len(data)) for b in bounds)
        np.testing.assert_array_equal(store.read("v", "x", lo, hi).view(np.uint8), data[lo:hi].view(np.uint8))
        idx = [p % len(data) for p in picks]  # any order, repeats
        np.testing.assert_array_equal(store.read_at("v", "x", idx).view(np.uint8), data[idx].view(np.uint8))
        store.close()


# -- motion-vector rasterisation ------------------------------------------------------------------------------

def mv_records(rows) -> np.ndarray:
    """rows: (source, w, h, dst_x, dst_y, motion_x, motion_y, motion_scale), as FFmpeg exports them."""
    out = np.zeros(len(rows), MV_DTYPE)
    for i, (source, w, h, dx, dy, mx, my, scale) in enumerate(rows):
        out[i] = (source, w, h, dx + mx // scale, dy + my // scale, dx, dy, 0, mx, my, scale)
    return out


@st.composite
def uniform_fields(draw):
    """Macroblocks tiling the frame, each one 16x16 block or four 8x8, each block referring to the past, the future
    or both, all showing the same forward motion v (coded px per frame) over their reference gaps."""
    mbw, mbh = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    scale = draw(st.sampled_from([1, 2, 4]))
    past, future = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    v = (draw(st.integers(-8, 8)), draw(st.integers(-8, 8)))  # motion * scale stays an integer below
    rows = []
    for my_ in range(mbh):
        for mx_ in range(mbw):
            split = draw(st.booleans())
            blocks = [(8, mx_ * 16 + ox, my_ * 16 + oy) for ox in (0, 8) for oy in (0, 8)] if split \
                else [(16, mx_ * 16, my_ * 16)]
            for size, x, y in blocks:
                sides = draw(st.sampled_from(["past", "future", "both"]))
                c = (x + size // 2, y + size // 2)
                if sides in ("past", "both"):  # src = dst - v * gap: content came from there
                    rows.append((-1, size, size, *c, -v[0] * past * scale, -v[1] * past * scale, scale))
                if sides in ("future", "both"):  # src = dst + v * gap: content goes there
                    rows.append((1, size, size, *c, v[0] * future * scale, v[1] * future * scale, scale))
    src = (mbw * 16, mbh * 16)
    dst = (draw(st.integers(4, src[0])), draw(st.integers(4, src[1])))
    return mv_records(rows), src, dst, draw(st.sampled_from([1, 2, 4, 8])), past, future, v


@settings(max_examples=60, deadline=None)
@given(field=uniform_fields())
def test_a_uniform_field_stays_uniform(field):
    recs, src, dst, cell, past, future, v = field
    mv, valid = pool_motion_vectors(recs, src_size=src, dst_size=dst, cell=cell, past_gap=past, future_gap=future)
    assert valid.all()  # every cell is covered
    expected = np.array([v[0] * dst[0] / src[0], v[1] * dst[1] / src[1]], np.float32)  # stored px per frame
    np.testing.assert_allclose(mv, np.broadcast_to(expected, mv.shape), rtol=1e-5, atol=1e-5)


@st.composite
def block_sets(draw):
    """Any blocks on the 8 px lattice (overlapping, or leaving holes), any motions, both directions."""
    sw, sh = 8 * draw(st.integers(2, 10)), 8 * draw(st.integers(2, 8))
    cell = draw(st.sampled_from([1, 2, 4, 8]))
    dw = cell * draw(st.integers(1, sw // cell))  # the stored width a whole number of cells: mirror symmetric
    dh = draw(st.integers(4, sh))
    rows = []
    for _ in range(draw(st.integers(1, 25))):
        w, h = draw(st.sampled_from([8, 16])), draw(st.sampled_from([8, 16]))
        x0, y0 = 8 * draw(st.integers(0, (sw - w) // 8)), 8 * draw(st.integers(0, (sh - h) // 8))
        scale = draw(st.sampled_from([1, 2, 4]))
        rows.append((draw(st.sampled_from([-1, 1])), w, h, x0 + w // 2, y0 + h // 2,
                     draw(st.integers(-64, 64)), draw(st.integers(-64, 64)), scale))
    return rows, (sw, sh), (dw, dh), cell


@settings(max_examples=60, deadline=None)
@given(case=block_sets(), gaps=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_mirrored_blocks_pool_to_the_flipped_field_with_dx_negated(case, gaps):
    """Rasterising the mirror image of the blocks (x -> W - x, motion_x -> -motion_x) gives hflip_motion of the
    field: mirrored in width, dx negated, dy and the validity mask only mirrored."""
    rows, src, dst, cell = case
    mirrored = [(s, w, h, src[0] - x, y, -mx, my, scale) for s, w, h, x, y, mx, my, scale in rows]
    kw = {"src_size": src, "dst_size": dst, "cell": cell, "past_gap": gaps[0], "future_gap": gaps[1]}
    mv, valid = pool_motion_vectors(mv_records(rows), **kw)
    mv_m, valid_m = pool_motion_vectors(mv_records(mirrored), **kw)
    flipped, flipped_valid = hflip_motion(mv, valid)
    np.testing.assert_array_equal(valid_m, flipped_valid)
    np.testing.assert_allclose(mv_m, flipped, atol=1e-4)
    moving = valid & (np.abs(mv[..., 0]) > 1e-3)
    if moving.any():  # dx really changes sign where there is horizontal motion
        assert np.all(np.sign(mv_m[..., ::-1, 0][moving]) == -np.sign(mv[..., 0][moving]))


# -- the clip sampler -------------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 400), clip_len=st.integers(1, 40), stride=st.integers(1, 12), seed=st.integers(0, 2**32),
       views=st.integers(1, 12))
def test_clip_indices_are_always_in_range(n, clip_len, stride, seed, views):
    rng = np.random.default_rng(seed)
    clip = random_clip(n, clip_len, stride, rng)
    assert clip.shape == (clip_len,) and clip.dtype == np.int64
    assert clip.min() >= 0 and clip.max() < n
    assert np.all(np.diff(clip) >= 0)
    if clip_span(clip_len, stride) <= n:  # fits: exactly strided, no clamping
        np.testing.assert_array_equal(np.diff(clip), stride)
    many = evenly_spaced_clips(n, clip_len, stride, views)
    assert many.shape == (views, clip_len) and many.min() >= 0 and many.max() < n
    starts = candidate_starts(n, clip_len, stride)
    assert starts[0] == 0 and starts.max() <= max(n - clip_span(clip_len, stride), 0)
    assert clip_at(int(starts[-1]), n, clip_len, stride).max() < n
