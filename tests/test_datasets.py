"""ClipDataset over real tiny stores (both backends): shapes, determinism, flip, motion units, masks, missing
modalities, DataLoader workers, short videos; and the fast store readers. (CMD's motion target and I-frames:
test_cmd.py.)"""
import h5py
import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader, default_collate

from conftest import TINY_SPEC, extract_in_process
from motionssl.preprocess.synthetic import encode, translating_frames
from motionssl.stores import open_store
from motionssl.train.augment import crop_resize_frames, draw_spatial, \
    COLOR_VECTOR, eval_crops, normalize, to_clip_tensor
from motionssl.train.datasets import ClipDataset, MissingModality, Needs, check_store, finish_batch, seed_worker
from motionssl.train.sampling import random_clip

ALL = ("rgb", "mv", "boundary", "edges")


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: a second intra-op thread only waits on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stores(tiny_stores):
    return {fmt: open_store(path) for fmt, path in tiny_stores.items()}


@pytest.fixture(scope="module")
def mv_store(tmp_path_factory):
    """rgb + mv only (no I-frames, no flow): one video translating right at 4 px/frame, stored = coded size."""
    root = tmp_path_factory.mktemp("mv_store")
    (root / "videos").mkdir()
    encode(root / "videos" / "right.mp4", translating_frames(12, size=(128, 64), velocity=(4, 0), seed=6), "x264-nob")
    spec = {**TINY_SPEC, "name": "tiny-mv", "modalities": ["rgb", "mv"]}
    return open_store(extract_in_process(root / "videos", root / "mv.zarr", spec, "zarr"))


def assert_samples_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if k == "views":
            assert len(a[k]) == len(b[k])
            for va, vb in zip(a[k], b[k]):
                assert_samples_equal(va, vb)
        elif isinstance(a[k], torch.Tensor):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
        else:
            assert a[k] == b[k], k


def mirrored(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
@pytest.mark.parametrize("clip_len, stride, size, views", [(4, 1, 32, 1), (8, 2, 16, 2), (3, 5, 24, 3)])
def test_sample_shapes(stores, fmt, clip_len, stride, size, views):
    needs = Needs(modalities=ALL, clip_len=clip_len, stride=stride, views=views)
    ds = ClipDataset(stores[fmt], needs, size=size)
    assert len(ds) == 3
    s, g = ds[(1, 0)], size // 4
    assert set(s) == {"index", "video", "label", "views"}
    assert s["views"][0]["rgb"].dtype == torch.uint8  # finished on the device
    assert s["views"][0]["rgb_color"].shape == (COLOR_VECTOR,)
    batch = default_collate([s, ds[(2, 0)]])
    s = finish_batch(s)
    assert "rgb_color" not in s["views"][0]
    assert (s["index"], s["video"], s["label"]) == (1, 1, -1)
    assert len(s["views"]) == views
    expected = {"frames": (clip_len,), "rgb": (3, clip_len, size, size), "mv": (2, clip_len, g, g),
                "mv_valid": (1, clip_len, g, g),
                "boundary": (1, clip_len, size, size), "edges": (1, clip_len, size, size)}
    for view in s["views"]:
        assert {k: tuple(v.shape) for k, v in view.items()} == expected
        assert view["frames"].dtype == torch.int64
        assert all(v.dtype == torch.float32 for k, v in view.items() if k != "frames")
        np.testing.assert_array_equal(np.diff(view["frames"].numpy()), stride)
    finish_batch(batch)
    assert batch["views"][0]["rgb"].shape == (2, 3, clip_len, size, size)
    assert batch["views"][0]["rgb"].dtype == torch.float32
    assert batch["views"][0]["mv"].shape == (2, 2, clip_len, g, g) and batch["video"].tolist() == [1, 2]


def test_sample_is_a_function_of_seed_epoch_and_index(stores):
    needs = Needs(modalities=("rgb", "mv"), clip_len=4, stride=2, views=2)
    a, b = ClipDataset(stores["zarr"], needs, size=32), ClipDataset(stores["zarr"], needs, size=32)
    assert_samples_equal(a[(1, 3)], b[(1, 3)])
    assert_samples_equal(a[1], b[(1, 0)])
    other_epochs = [a[(1, e)] for e in range(4, 8)]
    assert any(not torch.equal(o["views"][0]["frames"], a[(1, 3)]["views"][0]["frames"]) for o in other_epochs)
    assert all(not torch.equal(o["views"][0]["rgb"], a[(1, 3)]["views"][0]["rgb"]) for o in other_epochs)
    c = ClipDataset(stores["zarr"], needs, size=32, seed=1)
    assert not torch.equal(c[(1, 3)]["views"][0]["rgb"], a[(1, 3)]["views"][0]["rgb"])


def test_both_backends_give_the_same_samples(stores):
    needs = Needs(modalities=ALL, clip_len=4, stride=3, views=2)
    z, h = ClipDataset(stores["zarr"], needs, size=16), ClipDataset(stores["hdf5"], needs, size=16)
    for key in [(0, 0), (1, 5), (2, 9)]:
        assert_samples_equal(z[key], h[key])


def test_flip_mirrors_every_modality_and_negates_dx(stores):
    """flip_p 0 and 1 draw the same crops and colours: the flipped sample is the mirror of the other, with dx
    negated for mv; on the video moving right, mean dx changes sign."""
    needs = Needs(modalities=ALL, clip_len=6, stride=2)
    plain = finish_batch(ClipDataset(stores["zarr"], needs, size=32, flip_p=0.0)[(1, 2)])
    flip = finish_batch(ClipDataset(stores["zarr"], needs, size=32, flip_p=1.0)[(1, 2)])
    p, f = plain["views"][0], flip["views"][0]
    torch.testing.assert_close(f["rgb"], mirrored(p["rgb"]), rtol=0, atol=1e-5)
    for name in ("boundary", "edges", "mv_valid"):
        torch.testing.assert_close(f[name], mirrored(p[name]), rtol=0, atol=0)
    torch.testing.assert_close(f["mv"][0], -mirrored(p["mv"][0]), rtol=0, atol=0)
    torch.testing.assert_close(f["mv"][1], mirrored(p["mv"][1]), rtol=0, atol=0)
    valid = p["mv_valid"][0] > 0
    assert p["mv"][0][valid].mean() > 0.5 and f["mv"][0][mirrored(valid)].mean() < -0.5


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_centre_crop_motion_reads_in_output_pixels(stores, fmt):
    """4 stored px/frame, centre crop of the 64-px short side, resized to 32 px: 4 * 32 / 64 = 2 px/frame."""
    ds = ClipDataset(stores[fmt], Needs(modalities=("mv",), clip_len=6, stride=1), size=32, train=False)
    for vid, axis in (("right", 0), ("down", 1)):
        view = ds[ds.videos.index(vid)]["views"][0]
        valid = view["mv_valid"][0] > 0
        assert valid.float().mean() > 0.6
        np.testing.assert_allclose(view["mv"][axis][valid].median(), 2.0, atol=0.05)
        np.testing.assert_allclose(view["mv"][1 - axis][valid].median(), 0.0, atol=0.05)


@pytest.mark.parametrize("crops", [3, 10])
def test_test_crops_cut_each_clip_the_same_frames(stores, crops):
    """crops=3 or 10: views x crops views, clip-major, each the crop `eval_crops` gives, of the same frames; a flipped
    crop negates dx."""
    store = stores["zarr"]
    needs = Needs(modalities=("rgb", "mv"), clip_len=3, stride=2, views=2)
    many = ClipDataset(store, needs, size=32, train=False, crops=crops)
    one = ClipDataset(store, needs, size=32, train=False)
    index = many.videos.index("right")
    s, c = finish_batch(many[index]), finish_batch(one[index])
    assert len(s["views"]) == 2 * crops
    frames = store.read("right", "rgb")
    for clip in range(2):
        idx = c["views"][clip]["frames"].numpy()
        for k, crop in enumerate(eval_crops(crops, 2.0)):  # 128 x 64 stored frames
            view = s["views"][crops * clip + k]
            assert view["frames"].tolist() == idx.tolist()
            ref = normalize(to_clip_tensor(crop_resize_frames(frames[idx], crop, 32)))  # flips a flipped crop
            torch.testing.assert_close(view["rgb"], ref, rtol=0, atol=1e-6)
            valid = view["mv_valid"][0] > 0
            assert np.sign(float(view["mv"][0][valid].median())) == (-1 if crop.flip else 1)  # moving right
        if crops == 3:
            torch.testing.assert_close(s["views"][3 * clip + 1]["rgb"], c["views"][clip]["rgb"])  # centre = crops=1
    with pytest.raises(ValueError, match="test-time"):
        ClipDataset(store, needs, size=32, train=True, crops=3)


def test_random_crop_motion_reads_4_times_size_over_crop_pixels(stores):
    """The dataset's draws, replayed from default_rng([seed, epoch, index]), give the crop; the translation
    reads +-4 * size / crop_width_px in output pixels."""
    store, size = stores["zarr"], 32
    needs = Needs(modalities=("mv",), clip_len=4, stride=2)
    ds = ClipDataset(store, needs, size=size, seed=7)
    index = ds.videos.index("right")
    for epoch in range(6):
        view = ds[(index, epoch)]["views"][0]
        rng = np.random.default_rng([7, epoch, index])
        frames = random_clip(48, 4, 2, rng)
        params = draw_spatial(rng, aspect=2.0)
        np.testing.assert_array_equal(view["frames"], frames)
        crop_w = params.pixel_box(64, 128)[2]
        expected = 4 * size / crop_w * (-1 if params.flip else 1)
        valid = view["mv_valid"][0] > 0
        np.testing.assert_allclose(view["mv"][0][valid].median(), expected, rtol=0.03)


def test_mv_valid_marks_i_frames_and_masks_values(stores):
    store = stores["hdf5"]
    ds = ClipDataset(store, Needs(modalities=("mv",), clip_len=8, stride=1), size=32, train=False)
    view = ds[ds.videos.index("right")]["views"][0]
    np.testing.assert_array_equal(view["frames"], np.arange(20, 28))  # the centre clip holds I-frame 24
    types = bytes(store.read("right", "frame_type")).decode()
    assert types[24] == "I"
    valid = view["mv_valid"][0]
    for t, frame in enumerate(range(20, 28)):
        if types[frame] == "I":
            assert valid[t].sum() == 0
        else:
            assert valid[t].mean() > 0.8
    assert (view["mv"][:, valid == 0] == 0).all()
    assert set(valid.unique().tolist()) <= {0.0, 1.0}


def test_missing_modality_names_the_spec_that_provides_it(mv_store):
    for modalities, missing, spec in [(("rgb", "flow"), "flow", "--spec fast"),
                                      (("edges",), "edges", "--spec default"),
                                      (("rgb", "iframes"), "iframes", "--spec compressed")]:
        with pytest.raises(MissingModality) as err:
            check_store(mv_store, modalities)
        message = str(err.value)
        assert f"has no {missing};" in message and spec in message and "motionssl extract" in message
        assert "\n" not in message
    with pytest.raises(MissingModality, match="has no edges;"):
        ClipDataset(mv_store, Needs(modalities=("rgb", "edges")))
    check_store(mv_store, ("rgb", "mv"))


def test_short_video_repeats_its_last_frame(stores):
    ds = ClipDataset(stores["zarr"], Needs(modalities=("rgb", "mv"), clip_len=4, stride=4), size=16)
    index = ds.videos.index("short")
    for epoch in range(3):
        view = ds[(index, epoch)]["views"][0]
        np.testing.assert_array_equal(view["frames"], [0, 4, 5, 5])
        torch.testing.assert_close(view["rgb"][:, 2], view["rgb"][:, 3], rtol=0, atol=0)
        torch.testing.assert_close(view["mv"][:, 2], view["mv"][:, 3], rtol=0, atol=0)


def test_dataloader_with_two_workers_matches_the_main_process(stores):
    """HDF5 handles opened in the parent are not shared with forked workers; batches are equal either way."""
    ds = ClipDataset(stores["hdf5"], Needs(modalities=("rgb", "mv"), clip_len=4, stride=2, views=2), size=16)
    keys = [(2, 5), (0, 5), (1, 5), (2, 6), (0, 6), (1, 6)]
    ref = list(DataLoader(ds, batch_size=2, sampler=keys, num_workers=0))  # opens handles here first
    got = list(DataLoader(ds, batch_size=2, sampler=keys, num_workers=2, worker_init_fn=seed_worker))
    assert len(ref) == len(got) == 3
    for a, b in zip(ref, got):
        assert_samples_equal(a, b)


def test_videos_labels_and_positions(stores):
    store = stores["zarr"]
    ds = ClipDataset(store, Needs(clip_len=2), size=16, videos=["short", "right"], labels=[3, 7])
    assert len(ds) == 2 and store.videos == ["down", "right", "short"]
    s = ds[0]
    assert (s["index"], s["video"], s["label"]) == (0, 2, 3)
    assert (ds[1]["video"], ds[1]["label"]) == (1, 7)
    with pytest.raises(KeyError):
        ClipDataset(store, Needs(), videos=["nope"])
    with pytest.raises(ValueError):
        ClipDataset(store, Needs(), labels=[1])
    with pytest.raises(ValueError):
        ClipDataset(store, Needs(modalities=("mv",)), size=30)  # not a multiple of the 4-px cell
    with pytest.raises(ValueError):
        Needs(modalities=("depth",))


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_store_reads_match_the_libraries(tiny_stores, fmt):
    """The fast read paths (Zarr shard files read directly, HDF5 chunk runs) equal zarr-python and h5py."""
    store = open_store(tiny_stores[fmt])
    if fmt == "zarr":
        group = zarr.open_group(str(tiny_stores[fmt] / "videos" / "right"), mode="r")
        full = {name: group[name][:] for name in ("rgb", "mv", "mv_valid", "pts")}
    else:
        with h5py.File(tiny_stores[fmt] / "videos" / "right.h5", "r") as f:
            full = {name: f[name][:] for name in ("rgb", "mv", "mv_valid", "pts")}
    rng = np.random.default_rng(0)
    selections = [np.array([47, 0, 16, 15, 15, 33]), np.arange(3, 45, 4), np.array([-1, -48, 5]), rng.integers(0, 48, 20),
                  np.array([], np.int64)]
    for name, ref in full.items():
        for idx in selections:
            got = store.read_at("right", name, idx)
            assert got.dtype == ref.dtype
            np.testing.assert_array_equal(got, ref[idx], err_msg=f"{name} {idx}")
        np.testing.assert_array_equal(store.read("right", name, 13, 37), ref[13:37])
        np.testing.assert_array_equal(store.read("right", name), ref)
    with pytest.raises(IndexError):
        store.read_at("right", "rgb", [48])
