# The two commands a newcomer needs: `make serve` and `make test`. Both build .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint screenshots

$(BIN)/exchange: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,test]'
	touch $@

serve: $(BIN)/exchange
	$(BIN)/exchange serve --config exchange.toml

test: $(BIN)/exchange
	$(BIN)/pytest

lint: $(BIN)/exchange
	$(BIN)/ruff check exchange rules schemas tests examples bench
	$(BIN)/mypy

# Refresh the example app's screenshots in docs/img/ (the README shows them) from its browser test.
screenshots: $(BIN)/exchange
	BANK_APP_SCREENSHOTS=1 $(BIN)/pytest -q tests/examples/test_bank_app.py
