# Both targets bootstrap on a machine that has only Python 3.11 and pip: they install uv
# when it is missing, create .venv from uv.lock, then run.
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV_PYTHON := .venv/bin/python
DEMO_DIR ?= runs/demo

.PHONY: demo test bench lint venv notebook tutorials

venv: .venv/.synced

.venv/.synced: pyproject.toml uv.lock Makefile
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv \
	  || $(PYTHON) -m pip install --quiet --user uv \
	  || $(PYTHON) -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen --compile-bytecode
	@touch $@

demo: venv
	$(VENV_PYTHON) bin/train.py --output_dir=$(DEMO_DIR)

test: venv
	$(VENV_PYTHON) -m pytest -n 2 --dist loadgroup

# JupyterLab on the project's .venv, its kernel registered as "tff-gan (.venv)"; it prints
# the URL to open. For Colab's local runtime: make notebook NOTEBOOK_ARGS=--colab.
NOTEBOOK_ARGS ?=
notebook: venv
	$(VENV_PYTHON) bin/notebook.py $(NOTEBOOK_ARGS)

# Executes every tutorial with its full settings and stores it with its outputs (figures,
# tables), so that a reader sees them without running anything. About 44 minutes on 2 cores.
tutorials: venv
	$(VENV_PYTHON) tutorials/render.py

bench: venv
	$(VENV_PYTHON) bench/throughput.py
	$(VENV_PYTHON) bench/dp_overhead.py

lint: venv
	$(VENV_PYTHON) -m ruff check tff_gan tasks experiments bin tests bench tutorials
