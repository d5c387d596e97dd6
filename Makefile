# Two commands set everything up:  `make demo` (the light runtime) and `make test` (everything + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-fast bench install clean

# The light runtime: `pip install -e .` (NumPy, OpenCV, ONNX Runtime; no PyTorch) and the `fer` command.
$(VENV)/.base: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else "Python 3.10-3.12 is needed, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e .
	touch $@

# The full set (training, export, video, plots) and the test tools.
$(VENV)/.dev: $(VENV)/.base requirements.txt requirements-dev.txt
	$(PY) -m pip install --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.base

demo: $(VENV)/.base
	$(VENV)/bin/fer analyse Test_files/IMG_test_1.jpg

# The browser page's ONNX Runtime Web, pinned in web/package-lock.json (tests/commands/test_web.py skips without it).
web/node_modules: web/package-lock.json
	@if command -v npm >/dev/null; then cd web && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the browser page and its tests need it (skipped)"; fi

test: $(VENV)/.dev web/node_modules
	$(PY) -m pytest

test-fast: $(VENV)/.dev
	$(PY) -m pytest -m "not slow"

bench: $(VENV)/.dev
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache
