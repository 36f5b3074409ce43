# The two commands a newcomer needs: `make serve` and `make test`. Both build .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint

$(BIN)/exchange: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

serve: $(BIN)/exchange
	$(BIN)/exchange serve --config exchange.toml

test: $(BIN)/exchange
	$(BIN)/pytest

lint: $(BIN)/exchange
	$(BIN)/ruff check exchange rules schemas tests bench
	$(BIN)/mypy
