# diffc-pipeline. The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch (lies on disk here; elsewhere pip fetches it). Override for CUDA, e.g.
#   make install TORCH_SPEC='torch==2.5.1' PIP_EXTRA='--index-url https://download.pytorch.org/whl/cu124'
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# Where datasets are cached (pooch). Seeded from ../shared/datasets when that folder exists.
export DIFFC_CACHE ?= $(CURDIR)/.cache/diffc
SHARED_KODAK ?= ../shared/datasets/kodak

.PHONY: install test demo seed-data browser bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# Pre-seed the pooch cache with the shared Kodak copy (offline machines); the real download
# code then runs and verifies every sha256 instead of downloading.
seed-data:
	@if [ -d "$(SHARED_KODAK)" ]; then \
	  mkdir -p "$(DIFFC_CACHE)/kodak" && cp -u "$(SHARED_KODAK)"/kodim*.png "$(DIFFC_CACHE)/kodak/"; \
	  echo "seeded $(DIFFC_CACHE)/kodak from $(SHARED_KODAK)"; \
	fi

# Headless Chromium for tests/test_report_html.py (Debian's package): installed when run as root
# with apt-get, quietly; never fatal (the test skips and says why when chromium is absent).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 && echo "installed chromium"; } || \
	  echo "chromium not installed (needs root and apt-get): tests/test_report_html.py's browser test will skip"

test: install seed-data browser
	$(BIN)/python -m pytest -q

demo: install seed-data
	$(BIN)/python -m pipelines.demo

bench: install seed-data
	for b in benchmarks/*.py; do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
