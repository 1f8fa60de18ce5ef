"""Flow, motion map and flow edges inside extract: streaming equals whole-video computation."""
import numpy as np
import pytest
import torch

from conftest import write_spec
from motionssl.data_specs import Flow, load_spec
from motionssl.preprocess.flow import (
    DISFlow,
    TVL1Flow,
    dequantize_flow,
    flow_edges,
    flow_pairs,
    motion_boundary,
    quantize_flow,
)
from motionssl.preprocess.motion_maps import MotionMapStream
from motionssl.preprocess.synthetic import encode, moving_square_frames, translating_frames
from motionssl.stores import open_store
from test_extract import extract, motionssl


@pytest.mark.parametrize("edges_flow", ["separate", "derived"])
@pytest.mark.parametrize("n_frames", [3, 9, 23])
def test_stream_matches_whole_video(edges_flow, n_frames):
    """Blocks of 7 frames with 5 frames of history give exactly the whole-video maps."""
    frames = np.stack(translating_frames(n_frames, size=(48, 32), velocity=(2, 1)))
    cfg = Flow(method="dis", block_frames=7, edges_gap=5, edges_flow=edges_flow)
    method = DISFlow()
    stream = MotionMapStream(cfg, method, boundary=True, edges=True)
    out = [m for f in frames for m in stream.push(f)] + stream.finish()
    assert [m.t for m in out] == list(range(n_frames))
    fwd = flow_pairs(frames, method, gap=1, direction="forward")
    gap = min(5, n_frames - 1)
    if edges_flow == "separate":
        back = flow_pairs(frames, method, gap=gap, direction="backward")
    else:
        back = np.stack([-fwd[max(t, gap) - gap:max(t, gap)].sum(0) for t in range(n_frames)])
    np.testing.assert_array_equal(np.stack([m.flow for m in out]), fwd)
    np.testing.assert_array_equal(np.stack([m.boundary for m in out]), motion_boundary(fwd))
    np.testing.assert_allclose(np.stack([m.edges for m in out]), flow_edges(back), atol=1e-4)


def test_a_frames_two_flows_go_to_the_solver_side_by_side():
    """Each call gets a block's pairs, frames with both flows first (t -> t+1, then t -> t-5), so that a solver
    batch of an even size computes both flows of a frame together; the frames without both follow."""
    frames = np.stack([np.full((16, 24, 3), 10 * t, np.uint8) for t in range(14)])
    calls = []

    def method(src, dst):
        calls.append([(a // 10, b // 10) for a, b in zip(src[:, 0, 0, 0].tolist(), dst[:, 0, 0, 0].tolist())])
        return np.zeros(src.shape[:3] + (2,), np.float32)

    stream = MotionMapStream(Flow(method="dis", block_frames=7, edges_gap=5), method, boundary=False, edges=True)
    assert [m.t for f in frames for m in stream.push(f)] + [m.t for m in stream.finish()] == list(range(14))
    assert calls[0] == [(5, 6), (5, 0), (6, 7), (6, 1), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert calls[1] == [(t, p) for t in range(7, 13) for p in (t + 1, t - 5)] + [(13, 8)]  # the last: no t+1
    assert sorted(p for c in calls for p in c) == sorted([(t, t + 1) for t in range(13)]
                                                        + [(t, t - 5) for t in range(5, 14)])


@pytest.fixture(scope="module")
def flow_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("flow")
    (d / "in").mkdir()
    encode(d / "in" / "pan.mp4", translating_frames(24, velocity=(4, -2)), "x264-b")
    encode(d / "in" / "square.mp4", moving_square_frames(16, velocity=(3, 0)), "x264-nob")
    spec = write_spec(d / "f.yaml", modalities=["rgb", "mv", "flow", "boundary", "edges"],
                      resolution={"short_side": 128}, flow={"method": "dis", "block_frames": 10})
    extract(d / "in", d / "s.zarr", spec)
    return d / "s.zarr"


def test_flow_modalities_follow_conventions(flow_store):
    s = open_store(flow_store)
    assert s.arrays("pan")["flow"][1] == np.uint8  # stored 8-bit over [-20, 20] px (store_as: uint8)
    flow = s.read("pan", "flow")
    assert flow.dtype == np.float32 and flow.shape == (24, 128, 192, 2)
    assert s.arrays("pan")["edges"][0] == (24, 128, 192)
    inner = flow[:, 6:-6, 6:-6].reshape(24, -1, 2)
    np.testing.assert_allclose(np.median(inner, axis=1), np.tile([4.0, -2.0], (24, 1)), atol=0.1)  # t -> t+1
    np.testing.assert_array_equal(flow[-1], flow[-2])  # last frame copies the previous flow (MCL)
    edges = s.read("pan", "edges")
    np.testing.assert_array_equal(edges[:5], np.repeat(edges[5:6], 5, axis=0))  # t < gap copy t = gap
    assert edges.max() <= 10
    # Motion map: a global pan is ~0 inside; a moving square's outline lights up.
    pan_map = s.read("pan", "boundary").astype(np.float32)[:, 12:-12, 12:-12]
    square_map = s.read("square", "boundary").astype(np.float32)[5]
    assert np.percentile(pan_map, 95) < 0.05
    # The 48 px square is at x = 40 + 3t, y = 40 (stored at full scale): [40:88, 55:103] at t = 5.
    grown, shrunk = np.zeros(square_map.shape, bool), np.zeros(square_map.shape, bool)
    grown[34:94, 49:109] = True
    shrunk[46:82, 61:97] = True
    ring = grown & ~shrunk
    inside, background = shrunk, ~grown
    assert square_map[ring].mean() > 5 * square_map[inside].mean()
    assert square_map[ring].mean() > 5 * square_map[background].mean()


def test_dump_flow(flow_store, tmp_path):
    out = tmp_path / "e.npy"
    motionssl("dump", flow_store, "pan", "edges", "-o", out, check=0)
    np.testing.assert_array_equal(np.load(out), open_store(flow_store).read("pan", "edges"))


def test_tvl1_default_spec_on_a_tiny_video(tmp_path):
    (tmp_path / "in").mkdir()
    encode(tmp_path / "in" / "v.mp4", translating_frames(8, size=(96, 64), velocity=(2, 0)), "x264-nob")
    spec = write_spec(tmp_path / "t.yaml", modalities=["rgb", "flow"], resolution={"short_side": 32})
    assert load_spec(str(spec)).flow.method == "tvl1-opencv"
    extract(tmp_path / "in", tmp_path / "s.zarr", spec)
    flow = open_store(tmp_path / "s.zarr").read("v", "flow").astype(np.float32)
    np.testing.assert_allclose(np.median(flow[:, 4:-4, 4:-4].reshape(8, -1, 2), axis=1), np.tile([1, 0], (8, 1)),
                               atol=0.15)


def test_raft_without_weights_is_fatal(tmp_path, synthetic_dir):
    spec = write_spec(tmp_path / "r.yaml", modalities=["rgb", "flow"],
                      flow={"method": "raft", "raft_weights": str(tmp_path / "missing.pth")})
    err = extract(synthetic_dir, tmp_path / "s.zarr", spec, check=2).stderr
    assert "RAFT-large weights not found" in err and "missing.pth" in err
    assert not (tmp_path / "s.zarr").exists()


@pytest.fixture(scope="module")
def tiny_pan(tmp_path_factory):
    d = tmp_path_factory.mktemp("pan") / "in"
    d.mkdir()
    encode(d / "v.mp4", translating_frames(12, size=(96, 64), velocity=(2, -2)), "x264-nob")
    return d


def tvl1_torch_spec(path):
    return write_spec(path, modalities=["rgb", "flow", "edges"], resolution={"short_side": 32},
                      flow={"method": "tvl1-torch", "batch": 4, "block_frames": 8})


def test_tvl1_torch_spec_extracts_what_opencv_computes(tmp_path, tiny_pan):
    """Without a GPU the local cluster runs tvl1-torch on the CPU workers, and says so."""
    proc = extract(tiny_pan, tmp_path / "s.zarr", tvl1_torch_spec(tmp_path / "t.yaml"))
    note = "note: no CUDA device on this machine: tvl1-torch runs on the CPU"
    assert (note in proc.stdout) != torch.cuda.is_available(), proc.stdout
    s = open_store(tmp_path / "s.zarr")
    rgb, flow, edges = s.read("v", "rgb"), s.read("v", "flow"), s.read("v", "edges")
    assert flow.shape == (12, 32, 48, 2) and edges.shape == (12, 32, 48)
    # Stored pixels move by (1, -1) per frame at a third of the coded size: forward flow t -> t+1.
    np.testing.assert_allclose(np.median(flow[:, 4:-4, 4:-4].reshape(12, -1, 2), axis=1), np.tile([1, -1], (12, 1)),
                               atol=0.15)
    # OpenCV's TV-L1 on the stored frames, through the store's 8-bit quantisation: the same values,
    # but for a few pixels a quantisation step or two apart.
    expected = dequantize_flow(quantize_flow(flow_pairs(rgb, TVL1Flow())))
    assert (flow == expected).all(-1).mean() > 0.98 and np.percentile(np.abs(flow - expected), 99.5) <= 0.16


def test_tvl1_torch_on_a_scheduler_without_gpu_workers(tmp_path, tiny_pan, capsys):
    """tvl1-torch runs on CPU-only workers (no GPU resource asked); RAFT refuses to start."""
    from dask.distributed import LocalCluster

    from motionssl.preprocess.extract import ExtractOptions, FatalError, run_extract

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        spec = load_spec(str(tvl1_torch_spec(tmp_path / "t.yaml")))
        opts = ExtractOptions(tiny_pan, tmp_path / "s.zarr", spec, scheduler=cluster.scheduler_address, progress=False)
        assert run_extract(opts) == 0
        assert "no CUDA device among the workers: tvl1-torch runs on the CPU" in capsys.readouterr().out
        assert open_store(tmp_path / "s.zarr").read("v", "flow").shape == (12, 32, 48, 2)
        weights = tmp_path / "raft.pth"
        weights.write_bytes(b"present")  # the check before any work looks for the file only
        raft = load_spec(str(write_spec(tmp_path / "r.yaml", modalities=["rgb", "flow"],
                                        flow={"method": "raft", "raft_weights": str(weights)})))
        with pytest.raises(FatalError, match="no worker offers the GPU resource"):
            run_extract(ExtractOptions(tiny_pan, tmp_path / "r.zarr", raft, scheduler=cluster.scheduler_address))
