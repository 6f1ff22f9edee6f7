# The README's two commands: `make demo` (train + evaluate on synthcrowd, CPU) and `make test`.
# Both build .venv on first use. torch is installed first and pinned, so that pip never
# resolves a bare `torch` requirement (which on PyPI is the CUDA build, GBs of wheels):
#   1. a torch wheel pip already finds locally (find-links, e.g. a prepared CI machine) is used
#      as is, its dependencies from the usual indexes;
#   2. otherwise torch comes from TORCH_INDEX, PyTorch's CPU wheels by default. GPU users:
#      `make install TORCH_INDEX=https://download.pytorch.org/whl/cu126` (their CUDA), or
#      create .venv with their own torch first: a venv that already has torch keeps it.
# torchvision is optional (a faster NMS kernel): `make torchvision` installs the release built
# for TORCH_VERSION from the same index.
PYTHON              ?= python3
VENV                ?= .venv
TORCH_VERSION       ?= 2.13.0
TORCHVISION_VERSION ?= 0.28.0
TORCH_INDEX         ?= https://download.pytorch.org/whl/cpu
BIN           := $(VENV)/bin
STAMP         := $(VENV)/.crowdloss-installed
DEMO_DIR      := playground/detection/synthcrowd/lla.res18.fpn.synthcrowd.256size.2600
PYTEST_ARGS   ?=
DEMO_PRECISION ?= auto
BF16_OPTS     := SOLVER.AMP.ENABLED True SOLVER.AMP.DTYPE bfloat16 MODEL.CHANNELS_LAST True

.PHONY: install torchvision demo test bench clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null \
	  || { $(BIN)/pip install --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null \
	       && $(BIN)/pip install "torch==$(TORCH_VERSION)"; } \
	  || $(BIN)/pip install "torch==$(TORCH_VERSION)" --index-url "$(TORCH_INDEX)"
	$(BIN)/pip install -r requirements.txt pytest pytest-timeout
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $@

torchvision: $(STAMP)
	$(BIN)/pip install "torchvision==$(TORCHVISION_VERSION)" --index-url "$(TORCH_INDEX)"

# DEMO_PRECISION: auto (bfloat16 autocast + channels-last weights where the CPU runs bfloat16
# natively, AVX512-BF16 / AMX: about 1.8x faster per step; float32 elsewhere), bf16 or fp32.
demo: $(STAMP)
	case "$(DEMO_PRECISION)" in \
	  bf16) opts="$(BF16_OPTS)";; \
	  fp32) opts="";; \
	  auto) opts=$$($(BIN)/python -c "from crowdloss.engine.runner import cpu_has_native_bf16 as f; print('$(BF16_OPTS)' if f() else '')");; \
	  *) echo "DEMO_PRECISION must be auto, bf16 or fp32, got $(DEMO_PRECISION)" >&2; exit 2;; \
	esac; \
	echo "make demo: pods_train $${opts:-(float32: the experiment as written)}"; \
	cd $(DEMO_DIR) && $(CURDIR)/$(BIN)/pods_train $$opts && $(CURDIR)/$(BIN)/pods_test

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
