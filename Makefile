# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench docs clean

$(STAMP): pyproject.toml requirements.lock requirements-test.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet -r requirements.lock -r requirements-test.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@echo "compiling rnnkit's fused CPU kernels into numba's cache (two processes, a few minutes on 2 cores, once), then tuning them to this CPU"
	$(PY) -c "from rnnkit.kernels import fused; fused.warm_up()" && $(PY) -m rnnkit.cli tune
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m rnnkit.demo

# the tests in two worker processes (pytest-xdist), most tests being small and single-threaded;
# `.venv/bin/python -m pytest -p no:xdist` runs them in one
test: $(STAMP)
	$(PY) -m pytest -q -n 2

bench: $(STAMP)
	$(PY) -m rnnkit.cli bench

# the documentation site (MkDocs, Material theme, API pages from the docstrings) into site/; strict:
# a broken link or reference fails the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build *.egg-info
