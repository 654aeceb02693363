# otel-sidecar: `make demo` and `make test` work on a fresh machine (they install what they need).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-floors test-newest lint bench prometheus docs helm-lint rules-test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m agent.demo

test: $(STAMP) prometheus
	$(BIN)/ruff check agent tests
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The unit tests on the dependency floors of pyproject.toml, installed together (a floor is a claim; CI checks it).
FLOORS := .venv-floors
test-floors:
	test -x $(FLOORS)/bin/python || $(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install --quiet --upgrade pip
	$(FLOORS)/bin/python tests/tools/floors.py > $(FLOORS)/constraints.txt
	$(FLOORS)/bin/python -m pip install --quiet -c $(FLOORS)/constraints.txt '.[test]'
	$(FLOORS)/bin/python -m pytest -q -p no:cacheprovider tests/unit

# The unit tests on the newest Python release the machine has (PATH or pyenv), with the newest dependencies:
# pyproject.toml sets no upper bound on Python, which is a claim too. Fails, saying so, when none newer than 3.11.
NEWEST := .venv-newest
test-newest:
	@newest=$$($(PYTHON) -m tests.tools.newest_python) && \
	  if [ "$$($(NEWEST)/bin/python -VV 2>/dev/null)" != "$$($$newest -VV)" ]; then \
	    rm -rf $(NEWEST) && $$newest -m venv $(NEWEST); fi  # made anew when a newer release appears
	$(NEWEST)/bin/python --version
	$(NEWEST)/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST)/bin/python -m pip install --quiet --upgrade '.[test]'
	$(NEWEST)/bin/python -m pytest -q -p no:cacheprovider tests/unit

lint: $(STAMP)
	$(BIN)/ruff check agent tests
	$(BIN)/ruff format --check agent tests
	$(BIN)/mypy

# Prometheus and promtool (Debian package) are needed by the scrape and rule tests; never skipped.
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  echo "installing Debian package prometheus (needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

# The benchmark is a separate command, never a timed assertion in the tests.
bench: $(STAMP)
	$(BIN)/python bench/run.py

# Both are also run by `make test`; these targets are for working on the chart and the rules alone.
helm-lint: $(STAMP)
	$(BIN)/python tests/tools/helm_venv.py >/dev/null
	.tools/helm-venv/bin/python tests/tools/helm_lint.py helm/otel-sidecar

rules-test: prometheus
	promtool check rules deploy/prometheus/rules/*.yaml
	promtool test rules deploy/prometheus/tests/*.yaml

docs: $(STAMP)
	$(BIN)/python -m agent.config.docs > docs/configuration.md
	$(BIN)/python -m agent.config.jsonschema

clean:
	rm -rf $(VENV) $(FLOORS) $(NEWEST) .pytest_cache .ruff_cache .mypy_cache .hypothesis
