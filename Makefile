# Two commands set up and run everything on a fresh machine: `make demo` and `make test`.
# The venv lives in .venv; torch is pinned to the CPU build that this kind of machine has on disk, installed
# together with the package, so that the package's own torch range is satisfied without pulling a multi-GB CUDA
# build. Everything is installed with uv (several times faster than pip), or with pip where uv cannot be installed.
VENV    ?= .venv
PYTHON  ?= python3
TORCH   ?= torch==2.13.0
BIN     := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo test chromium lint format schema clean

# uv installs torch and everything else in one resolution (59 s here, against 82 s for pip's torch and then uv's
# rest); it reads pip's local wheel folders (PIP_FIND_LINKS) only when told, hence --find-links.
FIND_LINKS := $(foreach dir,$(PIP_FIND_LINKS),--find-links $(dir))

$(BIN)/knrecall: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv && $(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode \
	  $(FIND_LINKS) "$(TORCH)" -e ".[test]" \
	  || { $(BIN)/pip install --quiet "$(TORCH)" && $(BIN)/pip install --quiet -e ".[test]"; }
	touch $@

setup: $(BIN)/knrecall

demo: setup  ## run the main job on the embedded world (profile: profiles/default)
	$(BIN)/snakemake --profile profiles/default
	@cat results/metrics/world.json results/metrics/attribution.json
	@$(BIN)/python -m knrecall tables
	@$(BIN)/python -m knrecall timings
	@echo "report: results/report/index.html"

# Two test processes (pytest-xdist), a test module at a time; tests/conftest.py sends the slow workflow modules first
# and makes the tiny reference run they share once per session.
TEST_WORKERS ?= 2
test: setup chromium  ## run the test suite
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The report test renders the page in headless Chromium: Debian's package, installed here when missing (as root,
# or with sudo); where that is impossible the test is skipped with the reason.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo="sudo -n"; fi; \
	  echo "installing Debian's chromium for the report test"; \
	  { $$sudo apt-get install -y -qq chromium || { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium; }; } \
	    >/dev/null 2>&1 || echo "could not install chromium: the report's browser test will be skipped"; }

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules

format: setup
	$(BIN)/snakefmt Snakefile rules

schema: setup  ## regenerate schemas/params.schema.yaml from knrecall/config.py
	$(BIN)/python -m knrecall schema --out schemas/params.schema.yaml

clean:
	rm -rf results .snakemake
