# Set-up and entry points. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned: a bare `torch` requirement from PyPI pulls a multi-GB CUDA
# build. Where no CPU wheel of this version is on local disk, point TORCH_PIP_ARGS at a CPU wheel
# index (--index-url ...) or change TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,hub]"
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/procon demo --out runs/demo

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	HF_HUB_OFFLINE=1 $(PY) bench/bench_step.py

clean:
	rm -rf runs .pytest_cache
