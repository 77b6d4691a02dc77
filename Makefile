# lensdesign: `make demo` sets everything up and runs optimize → export → report on the demo spec.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= runs/edof-demo

.PHONY: venv demo test bench gpu-check lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

# torch first, pinned to the local CPU wheel when torch is missing (a bare 'torch' would pull a CUDA build)
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/lensdesign check specs/edof-demo.yaml
	$(BIN)/lensdesign optimize specs/edof-demo.yaml --out $(RUN) --force
	$(BIN)/lensdesign export $(RUN) --tiff --gds --force
	$(BIN)/lensdesign report $(RUN)

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# on a CUDA machine: physics on the GPU, paper-scale step time and memory, 1…K GPUs under torchrun (BENCHMARKS.md);
# elsewhere it prints "no CUDA device" and succeeds
gpu-check: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_check

lint: $(STAMP)
	$(BIN)/ruff check lensdesign tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
