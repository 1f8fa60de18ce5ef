"""The pictures module: charts drawn by matplotlib (Agg) at exact pixel sizes, one panel per metric, log scale
where a loss spans decades, a legend naming the runs; every picture RGB and written by one `write_png`."""
import cv2
import numpy as np
import pytest

from motionssl.pictures import write_png
from motionssl.pictures.curves import PANEL, _log_scale, overlay_runs, run_curves
from motionssl.pictures.figures import motion_l1_bars, recall_curve


def rows(n, loss0):
    return [{"step": s, "loss": loss0 * 0.97 ** s, "lr": 0.1, "clips_per_s": 50.0} for s in range(1, n + 1)]


def test_one_panel_per_logged_metric_at_the_panel_size():
    image = run_curves(rows(100, 10.0))
    assert image.shape == (PANEL[1], 3 * PANEL[0], 3) and image.dtype == np.uint8
    assert run_curves([]) is None
    assert (image < 120).any() and (image == 255).all(-1).mean() > 0.5  # dark strokes on white


def test_log_scale_for_a_loss_spanning_a_decade_and_learning_rates_10x_apart():
    a = np.array
    assert _log_scale("loss", [a([10.0, 0.5])]) and _log_scale("motion_loss", [a([20.0, 5.0]), a([1.0])])
    assert not _log_scale("loss", [a([2.0, 0.5])]) and not _log_scale("loss", [a([1.0, -0.5])])
    assert not _log_scale("lr", [a([0.1, 0.05, 0.0])])  # one cosine schedule: linear
    assert _log_scale("lr", [a([0.3, 0.0]), a([1e-4, 0.0])]) and not _log_scale("lr", [a([0.3]), a([0.1])])
    assert not _log_scale("clips_per_s", [a([1.0]), a([100.0])]) and not _log_scale("loss", [])


def test_overlaid_runs_have_a_colour_each_and_a_legend_row_each():
    two = overlay_runs([("a", rows(50, 10.0)), ("b", rows(30, 1.0))], keys=("loss", "lr", "acc"))
    three = overlay_runs([("a", rows(50, 10.0)), ("b", rows(30, 1.0)), ("c", rows(1, 2.0))], keys=("loss", "lr"))
    assert two.shape[1] == 2 * PANEL[0] and three.shape[0] > two.shape[0] > PANEL[1]  # "acc": nobody logged it
    blue, orange = np.array([31, 119, 180]), np.array([255, 127, 14])  # matplotlib's C0, C1 (RGB)
    for colour in (blue, orange):
        assert (np.abs(two.astype(int) - colour).sum(-1) < 30).sum() > 100
    with pytest.raises(ValueError, match="logged any of the keys"):
        overlay_runs([("a", rows(5, 1.0))], keys=("acc",))


def test_charts_and_write_png(tmp_path):
    curve = recall_curve({1: 0.5, 5: 0.8, 10: 1.0})
    bars = motion_l1_bars([("identity", 0.1, 0.08), ("mv", 0.05, 0.04)], margin=8)
    assert curve.shape == (300, 420, 3) and bars.shape[1] == 640
    path = write_png(curve, tmp_path / "sub" / "r.png")
    np.testing.assert_array_equal(cv2.imread(str(path))[..., ::-1], curve)  # RGB in, the same pixels out
