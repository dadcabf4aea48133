# Both targets create or update .venv/ from pyproject.toml by themselves.
PYTHON ?= python3
# CPU threads for reproduce (default: the cores this process may use, capped by OMP_NUM_THREADS)
THREADS ?=
THREADS_ARG := $(if $(THREADS),--threads $(THREADS),)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: reproduce reproduce-quick smoke-paper test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/dash reproduce --preset digits $(THREADS_ARG)

reproduce-quick: $(STAMP)
	$(BIN)/dash reproduce --preset digits --quick $(THREADS_ARG)

# the paper path (cifar10 at 35.75M / 6.08M) through every notebook on a CIFAR-format root of noise
smoke-paper: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python bench/smoke_paper.py

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	MPLBACKEND=Agg OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run_all.py --readme

clean:
	rm -rf $(VENV) runs
