# The two commands of README's set-up: `make train` runs the book's chapter-5 run, `make test` the tests.
# Each creates .venv when it is missing and installs into it what it needs; later calls reuse it.
#   make train ARGS="model=tiny trainer.max_epochs=2"     arguments for train.py
#   make train model=tiny trainer.max_epochs=2             the same: unknown variables go to train.py
#   make test ARGS="-x tests/core/test_model.py"               arguments for pytest
#   make test-quick                                       the quick tier (pytest -m "not slow")
#   make train TORCH_INDEX=https://download.pytorch.org/whl/cpu    the CPU-only torch build (see docs/development.md)

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# Empty: pip picks torch from its usual index (on Linux, PyPI's torch is the CUDA build).
TORCH_INDEX ?=
ARGS ?=
# `make train model=tiny` (without ARGS=): make takes model=tiny as a variable of its own, and the run would
# silently be the default. Every command-line variable that is not one of the Makefile's goes to train.py too.
OWN_VARIABLES := PYTHON VENV TORCH_VERSION TORCH_INDEX ARGS SHARED_VERDICT
PASSED := $(filter-out $(addsuffix =%,$(OWN_VARIABLES)),$(MAKEOVERRIDES))
# Where a machine keeps The Verdict beside the checkout (CI does); otherwise train.py downloads it.
SHARED_VERDICT ?= ../shared/data/the-verdict.txt

.PHONY: train test test-quick

train: $(VENV)/.gptlit verdict
	$(VENV)/bin/python train.py $(PASSED) $(ARGS)

# The whole suite, as CI runs it.
test: $(VENV)/.gptlit-test verdict
	$(VENV)/bin/python -m pytest $(ARGS)

# The quick tier: everything but the end-to-end runs marked slow; a few minutes.
test-quick: $(VENV)/.gptlit-test verdict
	$(VENV)/bin/python -m pytest -m "not slow" $(ARGS)

# torch first and pinned, so that installing the project does not pick a torch build of its own.
$(VENV)/.gptlit: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(VENV)/bin/pip install --quiet -e .
	touch $@

# The book's own package is the tests' reference; its declared dependencies (TensorFlow, JupyterLab) serve
# the book's notebooks, not the modules the tests import, hence --no-deps.
$(VENV)/.gptlit-test: $(VENV)/.gptlit
	$(VENV)/bin/pip install --quiet -e ".[test]"
	$(VENV)/bin/pip install --quiet --no-deps llms-from-scratch
	touch $@

verdict:
	@if [ ! -f data/the-verdict.txt ] && [ -f $(SHARED_VERDICT) ]; then cp $(SHARED_VERDICT) data/the-verdict.txt; fi
.PHONY: verdict
