"""`motionssl show`: the panel's columns follow the store, one colour convention, I-frame marks, the mp4."""
import av
import numpy as np
import pytest

from conftest import TINY_SPEC
from motionssl.data_specs import spec_from_dict
from motionssl.pictures.frames import (
    IFRAME_RGB, INVALID_RGB, choose_steps, colour_wheel, motion_to_rgb, panel_columns, render_panel,
    render_panel_with_boxes, write_video,
)
from motionssl.pictures import write_png
from motionssl.stores import init_store, make_writer, open_store, write_index

H, W, CELL, T = 16, 24, 4, 10
ALL = ("rgb", "mv", "flow", "boundary", "edges")


def build_store(path, arrays=ALL, n_frames=T, vid="cls/v1"):
    """A store written through the real writer: a square moving right by 2 px/frame, I-frames at 0 and 6."""
    spec = spec_from_dict(TINY_SPEC)
    init_store(path, "zarr", spec)
    w = make_writer(path, "zarr", vid, spec)
    gh, gw = H // CELL, W // CELL
    shapes = {"rgb": ((H, W, 3), np.uint8), "mv": ((gh, gw, 2), np.float16), "mv_valid": ((gh, gw), bool),
              "flow": ((H, W, 2), np.float16), "boundary": ((H, W), np.float16), "edges": ((H, W), np.float16)}
    names = [a for a in arrays] + (["mv_valid"] if "mv" in arrays else [])
    for name in names:
        w.add_array(name, *shapes[name])
    w.add_array("frame_type", (), np.uint8, chunk=4096, shard=4096)
    iframes = [0, 6]
    for t in range(n_frames):
        w.append("frame_type", np.uint8(ord("I" if t in iframes else "P")))
        frame = {"rgb": np.full((H, W, 3), 100, np.uint8),
                 "mv": np.tile(np.array([2, 0], np.float16), (gh, gw, 1)),
                 "mv_valid": np.full((gh, gw), t not in iframes),
                 "flow": np.tile(np.array([2, 0], np.float16), (H, W, 1)),
                 "boundary": np.full((H, W), 0.5, np.float16),
                 "edges": np.full((H, W), t % 11, np.float16)}
        for name in names:
            w.append(name, frame[name])
    w.add_array("iframe_index", (), np.int32, chunk=4096, shard=4096)
    for t in iframes:
        w.append("iframe_index", np.int32(t))
    meta = {"id": vid, "frames": n_frames, "fps": 10.0, "codec": "h264", "stored_height": H, "stored_width": W,
            "spec_digest": spec.digest}
    w.commit(meta)
    write_index(path, {vid: meta})
    return open_store(path)


def test_choose_steps_are_spread_and_skip_t0():
    assert choose_steps(100, count=4) == [1, 33, 66, 98]
    assert choose_steps(3, count=4) == [0, 1, 2]
    assert choose_steps(5, count=4) == [1, 2, 3, 4]
    assert choose_steps(0) == []


def test_missing_modalities_drop_their_columns(tmp_path):
    s = build_store(tmp_path / "s", arrays=("rgb", "mv"))
    assert panel_columns(s, "cls/v1") == ["rgb", "mv"]
    img, boxes = render_panel_with_boxes(s, "cls/v1", steps=[1, 2])
    assert {name for _, name in boxes} == {"rgb", "mv"}
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    # Tiles are zoomed (stored short side 16 < 128) with nearest neighbour, same size in every column.
    y0, x0, y1, x1 = boxes[(1, "mv")]
    assert (y1 - y0, x1 - x0) == (4 * H, 4 * W)


def test_all_modalities_give_five_columns(tmp_path):
    s = build_store(tmp_path / "s")
    assert panel_columns(s, "cls/v1") == list(ALL)
    img, boxes = render_panel_with_boxes(s, "cls/v1", count=3)
    xs = sorted({b[1] for b in boxes.values()})
    assert len(xs) == 5 and len({b[0] for b in boxes.values()}) == 3
    # mv and flow hold the same rightward motion: with one shared scale they get the same colour.
    t = next(iter(boxes))[0]
    mv_px = img[boxes[(t, "mv")][0] + 20, boxes[(t, "mv")][1] + 20]
    flow_px = img[boxes[(t, "flow")][0] + 20, boxes[(t, "flow")][1] + 20]
    np.testing.assert_array_equal(mv_px, flow_px)
    assert render_panel(s, "cls/v1", count=3).shape == img.shape


def test_colour_convention():
    right = motion_to_rgb(np.array([[3.0, 0.0]]), max_motion=3)[0]
    left = motion_to_rgb(np.array([[-3.0, 0.0]]), max_motion=3)[0]
    down = motion_to_rgb(np.array([[0.0, 3.0]]), max_motion=3)[0]
    assert tuple(right) == (255, 0, 0) and tuple(left) == (0, 255, 255)  # hue = direction
    assert len({tuple(right), tuple(left), tuple(down)}) == 3
    half = motion_to_rgb(np.array([[1.5, 0.0]]), max_motion=3)[0]
    assert half[0] == 255 and 120 <= half[1] <= 135  # saturation = magnitude / max_motion
    np.testing.assert_array_equal(motion_to_rgb(np.array([[30.0, 0.0]]), max_motion=3)[0], right)  # clipped
    field = np.zeros((2, 2, 2))
    valid = np.array([[True, False], [True, True]])
    img = motion_to_rgb(field, valid, max_motion=1)
    assert tuple(img[0, 0]) == (255, 255, 255)  # measured zero motion is white
    assert tuple(img[0, 1]) == INVALID_RGB       # no vector is dark grey, not white
    wheel = colour_wheel(65)
    assert tuple(wheel[32, 64]) == (255, 0, 0) and tuple(wheel[32, 32]) == (255, 255, 255)
    np.testing.assert_array_equal(wheel[64, 32], down)  # the wheel's bottom is downward motion


def test_iframe_rows_are_marked(tmp_path):
    s = build_store(tmp_path / "s", arrays=("rgb", "mv"))
    img, boxes = render_panel_with_boxes(s, "cls/v1", steps=[5, 6])
    for t, marked in ((5, False), (6, True)):
        y0, x0, y1, x1 = boxes[(t, "rgb")]
        border = np.concatenate([img[y0, x0:x1], img[y1 - 1, x0:x1], img[y0:y1, x0], img[y0:y1, x1 - 1]])
        assert (border == IFRAME_RGB).all(axis=-1).all() == marked
        assert (img[y0 + 20, x0 + 40] == 100).all()  # the frame itself is still visible inside
    # The I-frame has no motion vectors: its mv tile is the invalid grey.
    y0, x0, _, _ = boxes[(6, "mv")]
    assert tuple(img[y0 + 5, x0 + 5]) == INVALID_RGB


def test_write_png_and_video(tmp_path):
    s = build_store(tmp_path / "s")
    png = tmp_path / "out" / "panel.png"
    write_png(render_panel(s, "cls/v1"), png)
    assert png.stat().st_size > 0
    mp4 = tmp_path / "out" / "panel.mp4"
    assert write_video(s, "cls/v1", mp4) == T
    with av.open(str(mp4)) as c:
        frames = list(c.decode(video=0))
        rate = c.streams.video[0].average_rate
    assert len(frames) == T and frames[0].width % 2 == 0 and frames[0].height % 2 == 0
    assert float(rate) == pytest.approx(10.0)


def test_bad_requests_are_one_line_errors(tmp_path):
    s = build_store(tmp_path / "s")
    with pytest.raises(ValueError, match=r"video 'nope' is not in store .*cls/v1"):
        render_panel(s, "nope")
    with pytest.raises(ValueError, match=r"step 10 is out of range .* 10 frames \(0..9\)"):
        render_panel(s, "cls/v1", steps=[1, 10])
    with pytest.raises(ValueError, match="not in store"):
        write_video(s, "nope", tmp_path / "x.mp4")
