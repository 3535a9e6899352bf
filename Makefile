# The two commands from the README. Both set up their own virtualenv in .venv.
VENV ?= .venv
PYTHON ?= python3
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: serve test bench

serve:
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/python -m pip install -q --upgrade pip
	@bash deploy/install-llama-cpp.sh $(VENV)/bin/python  # compiled first: the `local` extra then finds it installed
	@$(VENV)/bin/python -m pip install -q -e '.[local]'
	@bash deploy/install-embedding-model.sh $(VENV)/bin/python
	$(VENV)/bin/llm-gateway serve

test:
	bash tests/run.sh

# make bench [WHAT=gateway|cache|memory|local] [ARGS=...]: see bench/README.md
WHAT ?= gateway
bench:
	bash bench/run.sh $(WHAT) $(ARGS)
