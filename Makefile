# Both targets create or update .venv/ from pyproject.toml by themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: reproduce reproduce-quick test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/dash reproduce --preset digits

reproduce-quick: $(STAMP)
	$(BIN)/dash reproduce --preset digits --quick

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	MPLBACKEND=Agg OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run_all.py --readme

clean:
	rm -rf $(VENV) runs
