# Set-up and entry points. Each target creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/synthcaps_ce
# Debian packages the tests use: Chromium and its driver (the search page's browser test),
# espeak-ng (speech clips for the feature extractors' parity tests).
TEST_DEBS := chromium chromium-driver espeak-ng
# pytest-xdist workers for `make test` (each file runs whole on one worker, so module and
# session fixtures are built at most once per worker); 2 matches CI's 2 cores.
TEST_WORKERS ?= 2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo venv test-deps clean

# The runtime (what `make demo` needs).
$(VENV)/.installed: requirements.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# The runtime plus what only the tests use (torch, selenium, pytest, ruff).
$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed

# Installs the Debian packages of TEST_DEBS that are missing (as root, or through sudo).
test-deps:
	@missing=$$(for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the tests: $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

test: $(VENV)/.installed-test test-deps
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

demo: $(VENV)/.installed
	$(PY) launch.py --config configs/ce_synthcaps.py --workdir $(WORKDIR)

clean:
	rm -rf $(VENV) workdirs
