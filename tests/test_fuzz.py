"""A short, fixed fuzz campaign through the real `extract` (benchmarks/fuzz_extract.py; `make fuzz` runs the long
one): mutants of real and synthetic clips, both backends, every invariant checked."""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

from fuzz_extract import campaign, real_clips, synthetic_sources  # noqa: E402
from fuzz_mutators import MUTATORS, elements, mutate  # noqa: E402


def test_mutants_are_named_by_their_seed_and_know_the_containers(tmp_path):
    srcs = synthetic_sources(tmp_path)
    mp4, avi = srcs["syn_x264b_mp4"].read_bytes(), srcs["syn_mpeg4_avi"].read_bytes()
    assert {b"ftyp", b"moov", b"mdat", b"stsz", b"stco"} <= {k for _, _, k in elements(mp4)}
    assert {b"RIFF", b"LIST", b"avih", b"strh", b"idx1"} <= {k for _, _, k in elements(avi)}
    assert elements(srcs["syn_x264_mkv"].read_bytes()) == []  # Matroska: header values only
    for seed in range(30):
        assert mutate(mp4, seed) == mutate(mp4, seed)
    for name, mutator in MUTATORS.items():  # each changes the file
        changed = {mutator(avi, random.Random(seed))[0] != avi for seed in range(5)}
        assert True in changed, name


def test_a_short_fuzz_campaign_keeps_every_invariant(tmp_path):
    srcs = synthetic_sources(tmp_path / "sources")
    srcs["real_carphone_distorted"] = real_clips()["carphone_distorted"]  # a real H.264 clip, 7 KB
    # Real FFmpeg rarely crashes or hangs on these: one mutant of each batch is made to (MOTIONSSL_FAULT), so that
    # catching, counting and cleaning up after both is checked too.
    faults = {"MOTIONSSL_FAULT": "crash:m01001_,hang:m01007_"}
    result = campaign(srcs, mutants=10, seed=1000, batch=5, work=tmp_path, timeout=10, workers=2, run_limit=240,
                      env=faults)
    s = result["summary"]
    assert s["bugs"] == [], s["bugs"]
    assert s["mutants"] == 10 and s["no_record"] == 0 and s["batches"] == {"zarr": 1, "hdf5": 1}
    assert s["crashes_caught"] == 1 and s["hangs_caught"] == 1 and s["quarantined"] == 2, s
    assert s["ok"] >= 1 and s["failed"] >= 3, s  # the fixed seeds give both
