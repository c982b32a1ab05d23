# Set-up and entry points. Each target creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/synthcaps_ce

.PHONY: test demo venv clean

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

demo: $(VENV)/.installed
	$(PY) launch.py --config configs/ce_synthcaps.py --workdir $(WORKDIR)

clean:
	rm -rf $(VENV) workdirs
