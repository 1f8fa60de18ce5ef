"""H.264-coded chunks (`storage.rgb_codec: h264`, `storage.flow_codec: h264`): the codec, both backends, zarr-python."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY_FLOW_SPEC, extract_in_process
from motionssl.data_specs import SpecError, load_spec, spec_from_dict
from motionssl.preprocess.synthetic import encode, translating_frames
from motionssl.stores import _decode, open_store
from motionssl.stores.h264 import decode_chunk, encode_chunk
from motionssl.stores.summary import summarize
from motionssl.stores.verify import verify_store

H264_SPEC = {**TINY_FLOW_SPEC, "name": "tiny-h264", "flow": {**TINY_FLOW_SPEC["flow"], "maps_store_as": "uint8"},
             "storage": {**TINY_FLOW_SPEC["storage"], "rgb_codec": "h264", "flow_codec": "h264"}}
FRAMES = 30  # chunks of 4: the last chunk holds 2 frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """{(codec, format): store} of one 30-frame video translating right at 4 px/frame (128x64, x264)."""
    root = tmp_path_factory.mktemp("h264")
    videos = root / "videos"
    videos.mkdir()
    encode(videos / "right.mp4", translating_frames(FRAMES, size=(128, 64), velocity=(4, 0), seed=3), "x264-nob")
    return {(name, fmt): extract_in_process(videos, root / f"{name}.{fmt}", spec, fmt)
            for name, spec in (("blosc", TINY_FLOW_SPEC), ("h264", H264_SPEC)) for fmt in ("zarr", "hdf5")}


def test_rgb_chunk_round_trip_keeps_shape_and_psnr():
    frames = np.stack(translating_frames(8, size=(96, 64), velocity=(3, 1), seed=0))
    data = encode_chunk(frames, layout="rgb", crf=12)
    back = decode_chunk(data, frames.shape, layout="rgb")
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert psnr(back, frames) > 36  # noise texture; real video gains more (benchmarks/README.md)
    assert len(data) < frames.nbytes / 4
    # lower crf, higher fidelity
    assert psnr(decode_chunk(encode_chunk(frames, layout="rgb", crf=4), frames.shape, layout="rgb"), frames) > \
        psnr(back, frames) + 3


def test_decoding_stops_at_the_last_frame_asked_for():
    frames = np.stack(translating_frames(8, size=(64, 64), velocity=(2, 0), seed=1))
    data = encode_chunk(frames, layout="rgb", crf=12)
    full = decode_chunk(data, frames.shape, layout="rgb")
    head = decode_chunk(data, frames.shape, layout="rgb", frames=3)
    assert np.array_equal(head[:3], full[:3]) and not head[3:].any()


@pytest.mark.parametrize("threads, kind", [(2, "FRAME"), (2, "SLICE"), (0, "AUTO")])
def test_threaded_decoding_gives_the_same_frames(threads, kind):
    """Decoder threads (measured for the frontier, benchmarks/README.md) change the speed, never the frames:
    whole chunks, and chunks cut at the last frame a clip needs, where frame threads still hold frames back."""
    frames = np.stack(translating_frames(8, size=(96, 64), velocity=(3, 1), seed=3))
    for layout, data in (("rgb", encode_chunk(frames, layout="rgb", crf=12)),
                         ("planes", encode_chunk(frames[..., :2], layout="planes", crf=0))):
        shape = frames.shape if layout == "rgb" else frames[..., :2].shape
        for n in (None, 3):
            one = decode_chunk(data, shape, layout=layout, frames=n)
            assert one.any()
            assert np.array_equal(decode_chunk(data, shape, layout=layout, frames=n, threads=threads,
                                               thread_type=kind), one)


def test_partial_chunk_decodes_to_the_chunk_shape_zero_filled():
    frames = np.stack(translating_frames(3, size=(64, 64), velocity=(2, 0), seed=2))
    back = decode_chunk(encode_chunk(frames, layout="rgb", crf=12), (8, 64, 64, 3), layout="rgb")
    assert back.shape == (8, 64, 64, 3) and not back[3:].any()
    assert psnr(back[:3], frames) > 34


@pytest.mark.parametrize("shape", [(5, 30, 34, 2), (4, 30, 34)])
def test_planes_are_lossless(shape):
    q = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(decode_chunk(encode_chunk(q, layout="planes", crf=0), shape, layout="planes"), q)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_reader_api_matches_the_blosc_store(stores, fmt):
    h, b = open_store(stores["h264", fmt]), open_store(stores["blosc", fmt])
    hb, bb = h.arrays("right"), b.arrays("right")
    assert {k: hb[k] for k in ("rgb", "iframes", "flow")} == {k: bb[k] for k in ("rgb", "iframes", "flow")}
    rgb, ref = h.read("right", "rgb"), b.read("right", "rgb")
    assert rgb.shape == (FRAMES, 64, 128, 3) and rgb.dtype == np.uint8
    assert psnr(rgb, ref) > 35
    assert np.array_equal(h.read("right", "flow"), b.read("right", "flow"))  # lossless on the uint8 values
    iframes = h.read("right", "iframes")
    assert iframes.shape == b.read("right", "iframes").shape and psnr(iframes, b.read("right", "iframes")) > 35
    # slices and gathers agree with the whole read; each chunk decodes alone (29 is in the short last chunk)
    idx = [29, 3, 3, 17, 0, 28]
    assert np.array_equal(h.read_at("right", "rgb", idx), rgb[idx])
    assert np.array_equal(h.read("right", "rgb", 5, 13), rgb[5:13])
    for chunk_start in range(0, FRAMES, 4):
        assert np.array_equal(h.read_at("right", "rgb", [chunk_start + 1]), rgb[[chunk_start + 1]])


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_uint8_maps_read_back_within_half_a_step(stores, fmt):
    """boundary over [0, 5] and edges over [0, 10] in 255 steps (lossless H.264 on top), against float16."""
    h, b = open_store(stores["h264", fmt]), open_store(stores["blosc", fmt])
    assert h.arrays("right")["boundary"] == ((FRAMES, 64, 128), np.dtype(np.uint8))
    for name, bound in (("boundary", 5.0), ("edges", 10.0)):
        q, ref = h.read("right", name), b.read("right", name).astype(np.float32)
        assert q.dtype == np.float32 and q.shape == ref.shape
        inside = ref <= bound
        # half a step, plus float16's own rounding of the reference (values <= 10: < 0.004)
        assert np.abs(q - ref)[inside].max() <= bound / 510 + 0.004
        assert np.all(q[~inside] == np.float32(bound))  # saturates


def test_both_backends_store_the_same_values(stores):
    z, h = open_store(stores["h264", "zarr"]), open_store(stores["h264", "hdf5"])
    for name in ("rgb", "iframes", "flow", "boundary", "edges"):
        assert np.array_equal(z.read("right", name), h.read("right", name))


def test_plain_zarr_python_reads_what_motionssl_reads(stores):
    """A fresh interpreter that imports only zarr: the codec comes from the `zarr.codecs` entry point."""
    group = stores["h264", "zarr"] / "videos" / "right"
    code = ("import sys, zarr, numpy as np; a = zarr.open_array(sys.argv[1], mode='r'); "
            "sys.stdout.buffer.write(a.metadata.to_dict()['codecs'][0]['configuration']['codecs'][0]['name'].encode()"
            " + b'|'); np.save(sys.stdout.buffer, a[:])")
    s = open_store(stores["h264", "zarr"])
    for name in ("rgb", "flow"):
        out = subprocess.run([sys.executable, "-c", code, str(group / name)], capture_output=True, check=True).stdout
        codec, _, npy = out.partition(b"|")
        assert codec == b"motionssl.h264"
        stored = np.load(io.BytesIO(npy))  # zarr returns the stored values: uint8 flow, not yet dequantised
        assert np.array_equal(_decode(stored, s._open("right").attrs(name)), s.read("right", name))


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_verify_and_info_see_h264_arrays(stores, fmt):
    store = open_store(stores["h264", fmt])
    assert verify_store(store) == []
    info = summarize(store)
    assert info["videos"][0]["arrays"]["rgb"]["shape"] == [FRAMES, 64, 128, 3]
    blosc = summarize(open_store(stores["blosc", fmt]))
    # counted bytes are the H.264 streams (HDF5: the heap entries, not the dataset's pointers)
    assert 0.02 < info["array_bytes"]["rgb"] / blosc["array_bytes"]["rgb"] < 0.5
    assert json.dumps(info)


def test_spec_keys_are_validated_and_hashed():
    base = {"spec_version": 1, "modalities": ["rgb", "flow"]}
    for storage, message in [({"rgb_codec": "jpeg"}, "rgb_codec"), ({"flow_codec": "zstd"}, "flow_codec"),
                             ({"rgb_crf": 52}, "rgb_crf"), ({"rgb_crf": 1.5}, "rgb_crf")]:
        with pytest.raises(SpecError, match=message):
            spec_from_dict({**base, "storage": storage})
    with pytest.raises(SpecError, match="store_as"):
        spec_from_dict({**base, "flow": {"store_as": "float16"}, "storage": {"flow_codec": "h264"}})
    plain = spec_from_dict(base)
    assert spec_from_dict({**base, "storage": {"rgb_codec": "blosc", "rgb_crf": 12}}).digest == plain.digest
    digests = {spec_from_dict({**base, "storage": st}).digest
               for st in ({"rgb_codec": "h264"}, {"rgb_codec": "h264", "rgb_crf": 14}, {"flow_codec": "h264"})}
    assert len(digests) == 3 and plain.digest not in digests
    assert load_spec("compressed").storage.rgb_codec == "blosc"
