# Every target creates what it needs: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Trains a small model from scratch on the offline `digits` dataset into ./runs.
run: $(STAMP)
	DATASET=digits BACKBONE=VGG16 WEIGHTS=none IMAGE_SIZE=32 LEARNING_RATE=1e-4 EPOCHS=2 \
	BATCH_SIZE=32 ARTIFACT_URI=./runs $(BIN)/python entrypoint.py

lint: $(STAMP)
	$(BIN)/ruff check trainer tests entrypoint.py

test: $(STAMP)
	$(BIN)/ruff check trainer tests entrypoint.py
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
