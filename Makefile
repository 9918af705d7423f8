# chromacast: `make run` (the sample clip through the full pipeline) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

.PHONY: run test bench venv dev system-deps clean

$(RUNTIME_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e .
	@touch $@

$(DEV_STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[train,dev,triton]'
	@touch $@

venv: $(RUNTIME_STAMP)
dev: $(DEV_STAMP)

run: $(RUNTIME_STAMP)
	$(BIN)/chromacast run --config configs/sample.yaml

system-deps:
	@bash tests/rtsp/install_deps.sh

test: $(DEV_STAMP) system-deps
	-$(BIN)/python tests/triton_server/server.py  # a CPU tritonserver for tests/test_triton.py (else they skip)
	$(BIN)/python -m pytest

bench: $(DEV_STAMP)
	$(BIN)/python -m benchmarks.matrix

clean:
	rm -rf $(VENV) out
