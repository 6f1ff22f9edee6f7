# The README's two commands: `make demo` (train + evaluate on synthcrowd, CPU) and `make test`.
# Both build .venv on first use. torch is installed first and pinned, so that pip never
# resolves a bare `torch` requirement (which would pull GBs of CUDA wheels on a CPU machine).
# GPU users: create .venv with their own CUDA torch first; the stamp step then keeps it.
PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0
BIN           := $(VENV)/bin
STAMP         := $(VENV)/.crowdloss-installed
DEMO_DIR      := playground/detection/synthcrowd/lla.res18.fpn.synthcrowd.256size.2600
PYTEST_ARGS   ?=

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -r requirements.txt pytest pytest-timeout
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	cd $(DEMO_DIR) && $(CURDIR)/$(BIN)/pods_train && $(CURDIR)/$(BIN)/pods_test

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
