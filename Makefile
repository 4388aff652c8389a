# mimx: one command sets everything up for each job.
#   make test   create .venv, install mimx with its test extras, lint, run the test suite (CI runs this), then
#               its transformers checks again under transformers 4.46
#   make demo   create .venv, build the embedded sample shards, pretrain a small image MAE on them
#   make demo-beit   the same for BEiT-style: fit a codebook of the samples' patches, then pretrain on its ids
#   make demo-video  the same for a small VideoMAE on the embedded real clips
#   make demo-points the same for a small Point-MAE on clouds sampled from the embedded real meshes
#   make demo-multimodal the same for a small MultiMAE on generated RGB / depth / segmentation scenes
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the oldest transformers mimx's converters support (pyproject's bench extra), beside the venv's own 5.x
TRANSFORMERS4 := $(VENV)/transformers4

.PHONY: setup samples test lint demo demo-beit demo-video demo-points demo-multimodal clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

samples: setup
	$(BIN)/python -m mimx.datasets.samples data/samples
	$(BIN)/python -m mimx.datasets.video_samples data/samples
	$(BIN)/python -m mimx.datasets.shapes data/samples/point_clouds --source pymeshlab --train 32 --val 8 --test 8 --overwrite
	$(BIN)/python -m mimx.datasets.scenes data/samples --train 400 --val 50 --test 100 --overwrite

lint: setup
	$(BIN)/ruff check .

$(TRANSFORMERS4)/.installed: $(BIN)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --target $(TRANSFORMERS4) \
		'transformers==4.46.3' 'huggingface_hub==0.36.2' 'tokenizers==0.20.3'
	touch $@

test: setup lint $(TRANSFORMERS4)/.installed
	$(BIN)/python -m pytest -q
	PYTHONPATH=$(TRANSFORMERS4) $(BIN)/python -m pytest -q -m transformers -p no:cacheprovider

demo: samples
	$(BIN)/mimx image pretrain experiment=demo

demo-beit: samples
	$(BIN)/mimx image codebook experiment=demo codebook.vocab_size=256 codebook.images=4000 \
		codebook.out=runs/image_demo_beit/codebook.safetensors
	$(BIN)/mimx image pretrain experiment=demo method=beit model.codebook=runs/image_demo_beit/codebook.safetensors \
		run.dir=runs/image_demo_beit

demo-video: samples
	$(BIN)/mimx video pretrain experiment=demo

demo-points: samples
	$(BIN)/mimx points pretrain experiment=demo

demo-multimodal: samples
	$(BIN)/mimx multimodal pretrain experiment=demo

clean:
	rm -rf $(VENV) data/samples runs
