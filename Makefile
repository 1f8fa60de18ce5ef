# `make demo` and `make test` are the two commands a new user needs; both create or reuse .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python demo/make_videos.py demo_out/videos
	$(BIN)/motionssl extract demo_out/videos -o demo_out/store.zarr --spec default --workers 2
	$(BIN)/motionssl info demo_out/store.zarr
	$(BIN)/motionssl verify demo_out/store.zarr

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_extract.py --out bench_out

clean:
	rm -rf demo_out bench_out
