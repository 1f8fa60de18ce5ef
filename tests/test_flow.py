"""Optical flow methods, frame pairing, and the MCL / MoDist motion maps derived from flow."""
import numpy as np
import pytest
import torch

from motionssl.preprocess.flow import (
    FLOW_METHODS,
    DISFlow,
    MissingWeights,
    RAFTFlow,
    TVL1Flow,
    TVL1TorchFlow,
    dequantize_flow,
    flow_edges,
    flow_pairs,
    motion_boundary,
    quantize_flow,
    raft_cache_path,
)
from motionssl.preprocess.synthetic import moving_square_frames, translating_frames

MARGIN = 8  # border pixels excluded from EPE: content entering the frame has no true match


def frames(n, size, velocity, seed=0):
    return np.stack(translating_frames(n, size=size, velocity=velocity, seed=seed))


def epe(flow, expected):
    """Per-pixel end-point error on the interior."""
    inner = flow[..., MARGIN:-MARGIN, MARGIN:-MARGIN, :]
    return np.linalg.norm(inner - np.asarray(expected, np.float32), axis=-1)


# ---------------------------------------------------------------- flow methods on known motion

@pytest.mark.parametrize("name", ["tvl1-opencv", "dis"])
@pytest.mark.parametrize("velocity,size", [((2, 1), (64, 48)), ((-3, 2), (96, 64))])
def test_opencv_flow_recovers_translation(name, velocity, size):
    video = frames(3, size, velocity)
    flow = FLOW_METHODS[name]()(video[:-1], video[1:])
    assert flow.shape == (2, size[1], size[0], 2) and flow.dtype == np.float32
    err = epe(flow, velocity)  # forward flow: content of src moves by +velocity into dst
    assert err.mean() < 0.1 and err.max() < 0.5, (name, err.mean(), err.max())


def test_flow_methods_table():
    assert set(FLOW_METHODS) == {"tvl1-opencv", "dis", "raft", "tvl1-torch"}
    assert FLOW_METHODS["tvl1-opencv"] is TVL1Flow and FLOW_METHODS["dis"] is DISFlow and FLOW_METHODS["raft"] is RAFTFlow
    assert FLOW_METHODS["tvl1-torch"] is TVL1TorchFlow


def test_opencv_methods_reject_bad_input():
    a = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError):
        DISFlow()(a, a.astype(np.float32))
    with pytest.raises(ValueError):
        DISFlow()(a, np.zeros((1, 16, 17, 3), np.uint8))


# ---------------------------------------------------------------- pairing convention

class RecordPairs:
    """A fake method: frame t is filled with value t, and the 'flow' reports (src id, dst id)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, src, dst):
        self.calls += 1
        ids = np.stack([src[:, :, :, 0], dst[:, :, :, 0]], axis=-1)
        return ids.astype(np.float32)


def id_video(t):
    return np.broadcast_to(np.arange(t, dtype=np.uint8)[:, None, None, None], (t, 4, 5, 3)).copy()


def test_flow_pairs_forward_pairing_and_copied_end():
    rec = RecordPairs()
    out = flow_pairs(id_video(7), rec, gap=2, direction="forward")
    pairs = [tuple(out[t, 0, 0].astype(int)) for t in range(7)]
    assert pairs == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (4, 6), (4, 6)]
    assert rec.calls == 1  # all pairs in one batch


def test_flow_pairs_backward_pairing_and_copied_start():
    rec = RecordPairs()
    out = flow_pairs(id_video(8), rec, gap=5, direction="backward")
    pairs = [tuple(out[t, 0, 0].astype(int)) for t in range(8)]
    assert pairs == [(5, 0)] * 6 + [(6, 1), (7, 2)]
    assert rec.calls == 1


def test_flow_pairs_rejects_short_video_and_bad_direction():
    with pytest.raises(ValueError):
        flow_pairs(id_video(5), RecordPairs(), gap=5, direction="backward")
    with pytest.raises(ValueError):
        flow_pairs(id_video(5), RecordPairs(), gap=1, direction="sideways")


@pytest.mark.parametrize("name", ["tvl1-opencv", "dis"])
def test_flow_pairs_forward_gives_plus_velocity(name):
    v = (2, -1)
    out = flow_pairs(frames(4, (64, 48), v), FLOW_METHODS[name](), direction="forward")
    assert out.shape == (4, 48, 64, 2)
    assert epe(out, v).mean() < 0.1
    np.testing.assert_array_equal(out[-1], out[-2])  # MCL: last frame copies the previous flow


# TV-L1 at default parameters loses track of a 7 px diagonal jump on this fine texture at 96x64
# (DIS does not); MCL only pairs consecutive frames, so TV-L1 is checked on a 5 px jump here.
@pytest.mark.parametrize("name,v", [("tvl1-opencv", (1, 0)), ("dis", (1, 1)), ("dis", (0, -1))])
def test_flow_pairs_backward_gap5_gives_minus_five_velocity(name, v):
    out = flow_pairs(frames(7, (96, 64), v, seed=3), FLOW_METHODS[name](), gap=5, direction="backward")
    assert out.shape == (7, 64, 96, 2)
    err = epe(out, (-5 * v[0], -5 * v[1]))  # frame t -> t-5: content moves back by 5 velocities
    assert err.mean() < 0.15, err.mean()
    for t in range(5):
        np.testing.assert_array_equal(out[t], out[5])


# ---------------------------------------------------------------- naive references for the maps

PREWITT_X = np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]], np.float64) / 6
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
CENTRAL_X = np.array([[0, 0, 0], [-1, 0, 1], [0, 0, 0]], np.float64) / 2
DERIVATIVE_X = {"prewitt": PREWITT_X, "sobel": SOBEL_X / 8, "central": CENTRAL_X}


def correlate3x3(img, kernel):
    """out[y, x] = sum_ij kernel[i, j] * img[y + i - 1, x + j - 1], borders replicated."""
    h, w = img.shape
    padded = np.pad(img.astype(np.float64), 1, mode="edge")
    out = np.zeros((h, w))
    for i in range(3):
        for j in range(3):
            out += kernel[i, j] * padded[i:i + h, j:j + w]
    return out


def reference_motion_boundary(flow, kx):
    u, v = flow[..., 0], flow[..., 1]
    ky = kx.T
    return np.sqrt(correlate3x3(u, kx) ** 2 + correlate3x3(u, ky) ** 2
                   + correlate3x3(v, kx) ** 2 + correlate3x3(v, ky) ** 2)


def reference_flow_edges(flow):
    mag = np.sqrt(flow[..., 0].astype(np.float64) ** 2 + flow[..., 1] ** 2)
    return np.hypot(correlate3x3(mag, SOBEL_X), correlate3x3(mag, SOBEL_X.T))


def random_flow(shape, seed=0):
    return (np.random.default_rng(seed).normal(0, 3, shape + (2,))).astype(np.float32)


def square_flow(h=48, w=64, velocity=(3.0, 0.0), pan=(0.0, 0.0)):
    """Ideal flow of a 16x16 square at rows/cols 16..31 moving over a panning background."""
    flow = np.empty((h, w, 2), np.float32)
    flow[:] = pan
    flow[16:32, 16:32] = (pan[0] + velocity[0], pan[1] + velocity[1])
    outline = np.zeros((h, w), bool)
    outline[15:33, 15:33] = True
    outline[17:31, 17:31] = False
    return flow, outline


@pytest.mark.parametrize("operator", ["prewitt", "sobel", "central"])
def test_motion_boundary_matches_reference(operator):
    flow = random_flow((2, 3, 20, 24))  # arbitrary leading dims
    out = motion_boundary(flow, operator=operator)
    assert out.shape == (2, 3, 20, 24) and out.dtype == np.float32
    for idx in np.ndindex(2, 3):
        np.testing.assert_allclose(out[idx], reference_motion_boundary(flow[idx], DERIVATIVE_X[operator]),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("operator", ["prewitt", "sobel", "central"])
def test_motion_boundary_unit_ramp_has_unit_derivative(operator):
    flow = np.zeros((20, 24, 2), np.float32)
    flow[..., 0] = np.arange(24)  # u = x: u_x = 1, all other derivatives 0
    np.testing.assert_allclose(motion_boundary(flow, operator=operator)[1:-1, 1:-1], 1.0, rtol=1e-6)


def test_motion_boundary_ignores_global_pan_and_outlines_moving_square():
    pan = np.broadcast_to(np.float32([4.5, -2.0]), (3, 48, 64, 2))
    assert np.abs(motion_boundary(pan)).max() < 1e-5
    flow, outline = square_flow(pan=(4.5, -2.0))
    m = motion_boundary(flow)
    assert m[outline].min() > 0.4  # a 3 px step seen by a normalised 3x3 operator
    assert np.abs(m[~outline]).max() < 1e-5


def test_motion_boundary_on_tvl1_flow_of_moving_square():
    # The 48 px square covers rows 40..87 and cols 40..87 in frame 0, cols 43..90 in frame 1.
    video = np.stack(moving_square_frames(2, size=(112, 96), velocity=(3, 0)))
    m = motion_boundary(TVL1Flow()(video[:1], video[1:]))[0]
    ring = np.zeros(m.shape, bool)
    ring[36:92, 36:95] = True
    ring[44:84, 44:84] = False
    outside = np.ones(m.shape, bool)
    outside[30:, 30:100] = False
    inside, edge = m[48:80, 48:80].mean(), m[ring].mean()
    assert edge > 5 * max(inside, m[outside].mean()), (edge, inside, m[outside].mean())


def test_flow_edges_matches_reference_raw_sobel():
    flow = random_flow((3, 20, 24), seed=1)
    raw = flow_edges(flow, clamp=None)
    ref = np.stack([reference_flow_edges(f) for f in flow])
    np.testing.assert_allclose(raw, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(flow_edges(flow), np.clip(ref, 0, 10), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(flow_edges(flow, clamp=None, normalize=True), ref / 8, rtol=1e-5, atol=1e-5)
    assert flow_edges(flow).dtype == np.float32 and flow_edges(flow).max() <= 10.0


def test_flow_edges_ignores_global_pan_and_outlines_moving_square():
    pan = np.broadcast_to(np.float32([4.5, -2.0]), (2, 48, 64, 2))
    assert np.abs(flow_edges(pan)).max() < 1e-5
    flow, outline = square_flow(velocity=(3.0, 0.0))
    e = flow_edges(flow)
    # A 3 px step in |flow| gives raw Sobel 12 along the sides, clamped to 10; the outline's
    # outer corners touch the square diagonally only: hypot(3, 3) = 4.24.
    assert e[outline].min() > 4.2 and (e[outline] == 10.0).mean() > 0.8
    assert np.abs(e[~outline]).max() < 1e-5


def test_quantize_round_trip():
    flow = np.random.default_rng(2).uniform(-25, 25, (10, 12, 2)).astype(np.float32)
    q = quantize_flow(flow, bound=20.0)
    assert q.dtype == np.uint8
    assert quantize_flow(np.float32([-20, 0, 20, -30, 30]), bound=20.0).tolist() == [0, 128, 255, 0, 255]
    inside = np.abs(flow) <= 20
    err = np.abs(dequantize_flow(q, bound=20.0) - flow)
    assert err[inside].max() <= 20 / 255 + 1e-5


# ---------------------------------------------------------------- RAFT (no pretrained weights here)

def test_raft_plumbing_with_random_weights():
    """Untrained RAFT: checks padding/cropping, batching and dtypes only, not flow quality."""
    raft = RAFTFlow.with_random_weights(model="small", iters=2, batch=2)
    for h, w in [(48, 64), (44, 60)]:  # below RAFT's 128 px minimum; 60x44 not divisible by 8
        video = frames(3, (w, h), (2, 1))
        out = raft(video[:-1], video[1:])
        assert out.shape == (2, h, w, 2) and out.dtype == np.float32 and np.isfinite(out).all()
    one_at_a_time = RAFTFlow.with_random_weights(model="small", iters=2, batch=1)
    np.testing.assert_allclose(one_at_a_time(video[:-1], video[1:]), out, atol=1e-4)


def test_raft_random_weights_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    RAFTFlow.with_random_weights(model="small")
    assert torch.equal(state, torch.random.get_rng_state())


def test_raft_missing_weights_names_the_paths(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    with pytest.raises(MissingWeights, match="nope.pth") as info:
        RAFTFlow(model="small", weights=missing)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in str(info.value) and "download.pytorch.org" in str(info.value)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeights) as info:
        RAFTFlow(model="large")
    cached = tmp_path / "hub" / "checkpoints" / "raft_large_C_T_V2-1bb1363a.pth"
    assert str(cached) in str(info.value) and "\n" not in str(info.value)


def test_raft_loads_saved_weights_through_real_path(tmp_path, monkeypatch):
    saved = RAFTFlow.with_random_weights(model="small", seed=1, iters=2)
    path = tmp_path / "raft_small.pth"
    torch.save(saved.net.state_dict(), path)
    video = frames(2, (64, 48), (1, 0))
    expected = saved(video[:1], video[1:])
    np.testing.assert_array_equal(RAFTFlow(model="small", weights=path, iters=2)(video[:1], video[1:]), expected)
    # weights=None finds the same file where torchvision caches it
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    raft_cache_path("small").parent.mkdir(parents=True)
    path.rename(raft_cache_path("small"))
    np.testing.assert_array_equal(RAFTFlow(model="small", iters=2)(video[:1], video[1:]), expected)


@pytest.mark.skipif(not raft_cache_path("small").is_file(), reason="pretrained RAFT-small not in the torch hub cache")
def test_pretrained_raft_recovers_translation():
    video = frames(3, (160, 128), (2, -1))
    err = epe(RAFTFlow(model="small")(video[:-1], video[1:]), (2, -1))
    assert err.mean() < 0.2
