# Two commands set everything up:  `make demo` (runtime) and `make test` (runtime + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-fast bench install clean

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else "Python 3.10-3.12 is needed, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(PY) inference.py Test_files/IMG_test_1.jpg

test: $(VENV)/.dev
	$(PY) -m pytest

test-fast: $(VENV)/.dev
	$(PY) -m pytest -m "not slow"

bench: $(VENV)/.runtime
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache
