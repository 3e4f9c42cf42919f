# Two entry points on a fresh machine: `make demo` (main job) and `make test` (test suite).
# Both build .venv on first use; every pip call is pinned by constraints.txt (torch==2.13.0 CPU).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP_INSTALL := $(BIN)/python -m pip install -q -c constraints.txt

.PHONY: demo test lint bench clean browser results real-data

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/attnsets demo

# The report test opens report.html in Debian's headless Chromium; install it when missing
# (root on the project's machines). Without it that one test is skipped with a reason.
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "could not install chromium: the browser test will be skipped"

# The bundled real data sets (docs/data_sets.md): scanpy's wheel holds pbmc68k_reduced.h5ad,
# tcrdist3's the MIRA receptor sets. attnsets only reads their files, so the wheels are installed
# without their (heavy) dependencies. Without them the real-data tests are skipped with a reason.
real-data: $(STAMP)
	$(PIP_INSTALL) --no-deps scanpy==1.11.5 tcrdist3==0.3 || echo "could not install scanpy / tcrdist3: the real-data tests will be skipped"

test: $(STAMP) browser real-data
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The reconstruction study (configs/paper.toml, ~2 h on 2 cores; resumes where it stopped) and the
# page that quotes it. The store stays in results/paper; docs/results.md is regenerated from it.
results: $(STAMP)
	$(BIN)/attnsets run configs/paper.toml --out results/paper --workers 2 --resume
	$(BIN)/attnsets results-page results/paper --out docs/results.md

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
