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
	$(BIN)/motionssl extract demo_out/videos -o demo_out/store.zarr --spec fast --workers 2
	$(BIN)/motionssl info demo_out/store.zarr
	$(BIN)/motionssl verify demo_out/store.zarr
	$(BIN)/motionssl show demo_out/store.zarr real/bikes -o demo_out/bikes.png
	$(BIN)/motionssl show demo_out/store.zarr synthetic/square_right_b -o demo_out/square.png --video demo_out/square.mp4
	rm -rf demo_out/run_moco
	$(BIN)/motionssl pretrain --method rgb-moco --store demo_out/store.zarr -o demo_out/run_moco --backbone r3d10 \
		--backbone-width 8 --clip-len 8 --stride 2 --size 64 --batch-size 3 --steps 30 --workers 2 --lr 3e-3 \
		--option queue_size=64 --option hidden=128 --log-every 5 --save-every 15 --no-progress
	@echo "demo: panels in demo_out/*.png; the store is demo_out/store.zarr (spec fast: DIS flow; --spec default uses TV-L1, slower)"
	@echo "demo: a tiny rgb-moco run in demo_out/run_moco (log.csv, tensorboard/, checkpoint.pt); paper settings are the defaults"
	$(BIN)/python -m motionssl.preprocess.motion_classes demo_out/motion_classes --size 192x128 --frames 24
	$(BIN)/motionssl extract demo_out/motion_classes -o demo_out/motion.zarr --spec compressed --workers 2 --no-progress
	rm -rf demo_out/motion_moco demo_out/motion_linear demo_out/motion_eval
	$(BIN)/motionssl pretrain --method rgb-moco --store demo_out/motion.zarr -o demo_out/motion_moco --backbone r3d10 \
		--backbone-width 8 --clip-len 8 --stride 2 --size 64 --batch-size 8 --steps 40 --workers 2 --lr 3e-3 \
		--option queue_size=64 --option hidden=128 --log-every 5 --save-every 40 --no-progress
	$(BIN)/motionssl finetune --checkpoint demo_out/motion_moco/checkpoint.pt --store demo_out/motion.zarr \
		--labels demo_out/motion_classes/labels.csv -o demo_out/motion_linear --linear-probe --cached-features \
		--steps 200 --lr 0.01 --log-every 20 --workers 2
	$(BIN)/motionssl evaluate classify --checkpoint demo_out/motion_linear/checkpoint.pt --store demo_out/motion.zarr \
		--labels demo_out/motion_classes/labels.csv -o demo_out/motion_eval --workers 2
	$(BIN)/motionssl evaluate retrieve --checkpoint demo_out/motion_moco/checkpoint.pt --store demo_out/motion.zarr \
		--labels demo_out/motion_classes/labels.csv -o demo_out/motion_eval --workers 2
	$(BIN)/motionssl plot demo_out/motion_moco demo_out/motion_linear -o demo_out/motion_eval/curves.png
	@echo "demo: motion classes (right, left, down, up; appearance drawn independently of the class): a 40-step rgb-moco,"
	@echo "      a linear probe and retrieval; reports in demo_out/motion_eval (*.json, *.md, *.png)"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_extract.py --out bench_out
	$(BIN)/python benchmarks/bench_flow.py --out bench_out
	$(BIN)/python benchmarks/bench_storage.py --out bench_out
	$(BIN)/python benchmarks/bench_train.py --out bench_out
	$(BIN)/python benchmarks/bench_methods.py --out bench_out
	$(BIN)/python benchmarks/bench_faults.py --out bench_out
	$(BIN)/python benchmarks/bench_tvl1_torch.py --out bench_out
	$(BIN)/python benchmarks/bench_motion_sampling.py --out bench_out
	$(BIN)/python benchmarks/bench_mv_source.py --out bench_out

clean:
	rm -rf demo_out bench_out
