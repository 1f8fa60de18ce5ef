"""benchmarks/gpu_check.py --smoke: every section of the device check runs on the CPU at tiny sizes, and records
figures that make sense, so the check keeps working between GPU runs."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("rgb-moco", "cmd", "mvcgc", "mcl", "modist", "cgm")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_check")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out),
                        "--budget", "900"], capture_output=True, text=True, timeout=900)
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), r


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_section_ran(smoke):
    res, md, r = smoke
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert list(res["sections"]) == ["env", "tvl1", "raft", "extract", "ddp", "train", "loader"]
    assert {k: v["status"] for k, v in res["sections"].items()} == {k: "ok" for k in res["sections"]}
    assert res["smoke"] and res["device"] == "cpu"
    env = res["env"]
    assert env["torch"] and env["bf16_peak_tflops"] is None and "MFU not computed" in env["bf16_peak_source"]
    assert "| train | ok |" in md and "## Training step" in md and "torch " + env["torch"] in md


def test_flow_sections(smoke):
    s = smoke[0]["sections"]
    tvl1 = s["tvl1"]
    assert [r["batch"] for r in tvl1["rows"]] == [1, 2, 4] and all(positive(r["pairs_per_s"]) for r in tvl1["rows"])
    # tvl1-torch is TV-L1: on real pairs it lands close to OpenCV's flow, and batching changes nothing
    assert tvl1["reference_median_flow_px"] > 0.05
    assert all(r["epe_median"] < 0.05 and r["max_diff_vs_first_batch"] < 1e-3 for r in tvl1["rows"])
    assert tvl1["meets_goal"] == (tvl1["best_pairs_per_s"] >= 300)
    raft = s["raft"]
    assert "random" in raft["weights"] and [r["model"] for r in raft["rows"]] == ["small", "large"]
    assert all(positive(r["pairs_per_s"]) for r in raft["rows"])
    runs = s["extract"]["runs"]
    assert set(runs) == {"fast", "default-gpu", "raft"} and all(r["status"] == "ok" for r in runs.values())
    assert all(r["frames"] == 32 and positive(r["fps"]) for r in runs.values())  # 2 clips x 16 frames
    assert runs["fast"]["x_fast_cpu"] == 1.0 and positive(runs["raft"]["x_fast_cpu"])


def test_ddp_resumed_with_everything_on_the_device(smoke):
    ddp = smoke[0]["sections"]["ddp"]
    assert ddp["backend"] == "gloo" and [r["returncode"] for r in ddp["runs"]] == [0, 0]
    assert ddp["logged_steps"] == [1, 2] and ddp["checkpoint_step"] == 2
    assert ddp["summary"]["world_size"] == 1 and ddp["summary"]["finished"] and ddp["summary"]["device"] == "cpu"
    assert ddp["checkpoint_tensors"] > 20 and ddp["off_device"] == []
    assert all(math.isfinite(x) for x in ddp["losses"])


def test_training_step_of_every_method(smoke):
    train = smoke[0]["sections"]["train"]
    rows = train["rows"]
    assert set(rows) == {f"{m} eager" for m in METHODS} | {"rgb-moco channels_last_3d", "rgb-moco compile"}
    for key, r in rows.items():
        assert r["status"] == "ok" and r["batch"] == 2 and r["oom_at"] == [], key
        assert positive(r["steps_per_s"]) and r["clips_per_s"] == pytest.approx(2 * r["steps_per_s"])
        assert r["backbone"] == "r3d10" and r["size"] == 32 and r["changed"] >= (0 if r["variant"] == "eager" else 1)
        assert "mfu" not in r  # no bf16 peak for a CPU
    for m in METHODS:
        eager = rows[f"{m} eager"]
        # FLOPs of forward + backward of every network: more than 3 forwards of the backbone alone on the clips
        assert eager["step_tflop"] * 1e3 > 3 * 2 * eager["backbone_fwd_gflop_per_clip"] > 0, m
    assert positive(rows["rgb-moco compile"]["x_eager"])


def test_loader_against_step(smoke):
    loader = smoke[0]["sections"]["loader"]
    assert [(r["store"], r["workers"]) for r in loader["rows"]] == [("compressed", 1), ("compressed", 2),
                                                                   ("fast", 1), ("fast", 2)]
    for r in loader["rows"]:
        assert 0 <= r["data_wait_s_median"] <= r["step_s_median"] and 0 <= r["data_wait_share"] <= 1
        assert positive(r["clips_per_s"]) and r["device"] == "cpu"
