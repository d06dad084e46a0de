# gureum: two commands do everything on a fresh Debian 12 machine (as root):
#   make demo   install what is needed, build the tiny image, boot a real VM and show it working
#   make test   install what is needed and run the whole test suite (unit + real-VM integration)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
GUREUM := $(VENV)/bin/gureum
DEMO_HOME ?= /var/lib/gureum-demo
export GUREUM_CACHE_DIR ?= $(CURDIR)/.gureum/cache

.PHONY: setup system-packages venv demo test unit integration lint bench clean install screenshots

setup: system-packages venv

system-packages:
	bash scripts/setup-system.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	GUREUM_HOME=$(DEMO_HOME) bash scripts/demo.sh

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	PYTHONPATH=src $(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Unit tests in parallel (pytest-xdist): each is CPU-bound and independent, and the two CPUs
# of a small CI machine halve their time. Integration tests stay one at a time: each boots
# real VMs under TCG, which take the CPUs whole, and several share one service.
UNIT_JOBS ?= 2

unit: venv
	$(PY) -m pytest tests/unit -q -n $(UNIT_JOBS)

# Each test's time goes to .gureum/integration.xml (JUnit), to see where the suite's time goes.
integration: setup
	$(PY) -m pytest tests/integration -q --durations=15 --junitxml=.gureum/integration.xml

test: setup lint unit integration

# The web console's screenshots in docs/console/, taken by its browser tests.
screenshots: setup
	GUREUM_SCREENSHOTS=1 $(PY) -m pytest tests/integration/test_console.py -q

bench: setup
	$(PY) bench/launch.py
	$(PY) bench/recovery.py
	$(PY) bench/network.py
	$(PY) bench/api.py
	$(PY) bench/os.py
	$(PY) bench/instant.py
	$(PY) bench/compare.py

# System-wide, as a service: $(PREFIX) (a venv), /usr/local/bin/gureum, gureum.service
# (KillMode=process: stopping it leaves the VMs running), $(GUREUM_HOME)/config.toml.
install:
	PREFIX=$(or $(PREFIX),/opt/gureum) bash scripts/install.sh

clean:
	rm -rf $(VENV) .gureum .pytest_cache .ruff_cache
