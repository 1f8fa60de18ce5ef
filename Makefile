# `make demo` and `make test` are the two commands a new user needs; both create or reuse .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench fuzz gpu-check venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,s3,gs,slurm]'  # s3, gs, slurm: their tests run too (local S3 and GCS servers, 2 gloo processes)
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python demo/make_videos.py demo_out/videos
	$(BIN)/motionssl extract demo_out/videos -o demo_out/store.zarr --spec fast --workers 2
	$(BIN)/motionssl info demo_out/store.zarr
	$(BIN)/motionssl verify demo_out/store.zarr
	$(BIN)/motionssl show demo_out/store.zarr real/bikes -o demo_out/bikes.png
	$(BIN)/motionssl show demo_out/store.zarr synthetic/square_right_b -o demo_out/square.png -o demo_out/square.mp4
	@echo "demo: panels in demo_out/*.png; the store is demo_out/store.zarr (spec fast: DIS flow; --spec default uses TV-L1, slower)"
	$(BIN)/python -m motionssl.preprocess.motion_classes demo_out/motion_classes --size 192x128 --frames 24
	$(BIN)/motionssl extract demo_out/motion_classes -o demo_out/motion.zarr --spec fast --workers 2 --no-progress
	$(BIN)/python demo/methods.py demo_out/motion.zarr demo_out/motion_classes/labels.csv demo_out/methods

# The benchmarks' own extra (imagecodecs, icechunk: compared against, never used by motionssl).
$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,s3,gs,slurm,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python benchmarks/bench_extract.py --out bench_out
	$(BIN)/python benchmarks/bench_flow.py --out bench_out
	$(BIN)/python benchmarks/bench_storage.py --out bench_out
	$(BIN)/python benchmarks/bench_train.py --out bench_out
	$(BIN)/python benchmarks/bench_methods.py --out bench_out
	$(BIN)/python benchmarks/bench_faults.py --out bench_out
	$(BIN)/python benchmarks/bench_tvl1_torch.py --out bench_out
	$(BIN)/python benchmarks/bench_default_tvl1.py --out bench_out
	$(BIN)/python benchmarks/bench_layouts.py --out bench_out
	$(BIN)/python benchmarks/bench_motion_sampling.py --out bench_out
	$(BIN)/python benchmarks/bench_mv_source.py --out bench_out
	$(BIN)/python benchmarks/bench_decoder_memory.py --out bench_out
	$(BIN)/python benchmarks/bench_scale.py --out bench_out
	$(BIN)/python benchmarks/bench_commit.py --out bench_out
	$(BIN)/python benchmarks/bench_science.py --out bench_out
	$(BIN)/python benchmarks/diagnose_science.py --out bench_out --seed 0

# The device check: every CUDA path, timed, in about 8 minutes on one H100 (benchmarks/README.md, "GPU").
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --out gpu_out

# The long fuzz campaign of the decoder path (a short fixed one runs in `make test`); figures in benchmarks/README.md.
fuzz: $(STAMP)
	$(BIN)/python benchmarks/fuzz_extract.py --mutants 600 --out bench_out

clean:
	rm -rf demo_out bench_out gpu_out
