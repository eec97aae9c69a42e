# Two commands for a user: `make demo` (the main job) and `make test`.
# Everything else here is the set-up they share: a virtual environment with the CPU torch wheel.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Debian's Apertium pairs: every route the project translates through (en, es, fr, it, pt; others pivot via es).
APERTIUM := apertium apertium-eng-spa apertium-fr-es apertium-spa-ita apertium-es-pt

.PHONY: setup translators test demo demo-quick clean

setup: $(STAMP) translators

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU wheel first: an unpinned torch would pull gigabytes of CUDA packages.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Stage 1's offline translator. Installed when this is root with apt-get; otherwise the command to run is printed
# and the arrivals that cannot translate say so before they start (the paper's section 4.2 variant for them).
translators:
	@missing=""; for p in $(APERTIUM); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing the Apertium translators:$$missing"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
			|| echo "could not install$$missing; arrivals will run without translation where no route exists"; \
	else \
		echo "no offline translator for stage 1: run  sudo apt-get install$$missing  (without it, arrivals distil without translated text)"; \
	fi

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/mcl demo

demo-quick: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/mcl demo --quick

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
