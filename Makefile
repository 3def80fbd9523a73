# Every target creates what it needs: `make run` and `make test` work on a fresh clone.
# PYTHON: the interpreter of .venv (Python 3.11 or 3.12), e.g. make run PYTHON=python3.12.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test test-exports lint bench clean s3-local container-test mutate

# The interpreter is checked every time (a .venv that is broken, or made by an unsupported or
# another given interpreter, is made anew), then '.[dev]' installed when pyproject.toml changed.
venv:
	@bash scripts/venv.sh "$(PYTHON)" $(VENV) $(if $(filter command line environment,$(origin PYTHON)),1,0)
	@$(MAKE) --no-print-directory --silent $(STAMP)

# pip's progress, not minutes of silence; a venv made before the distribution was renamed
# (keras-image-trainer) loses the old name's claim on trainer/ first.
$(STAMP): pyproject.toml
	@echo "installing '.[dev]' into $(VENV): CPU TensorFlow and the test tools, about 3 GB" \
		"(a few minutes the first time)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip uninstall --quiet --yes trainer 2>/dev/null || true
	$(BIN)/pip install --progress-bar on -e '.[dev]'
	touch $(STAMP)

# Trains a small model from scratch on the offline `digits` dataset into ./runs.
run: venv
	DATASET=digits BACKBONE=VGG16 WEIGHTS=none IMAGE_SIZE=32 LEARNING_RATE=1e-4 EPOCHS=2 \
	BATCH_SIZE=32 ARTIFACT_URI=./runs $(BIN)/python entrypoint.py

# A local S3-compatible server (rclone's, which checks credentials) to try ARTIFACT_URI=s3://...
S3_LOCAL_PORT ?= 9000
s3-local: venv
	mkdir -p s3-data/runs
	@echo "S3 on http://127.0.0.1:$(S3_LOCAL_PORT): key trainer, secret trainer-secret, bucket runs (Ctrl-C stops)"
	RCLONE_CONFIG=/nonexistent $(BIN)/rclone serve s3 --addr 127.0.0.1:$(S3_LOCAL_PORT) \
		--auth-key trainer,trainer-secret s3-data

# ruff, then mypy over trainer/ (untyped function bodies checked too).
lint: venv
	$(BIN)/ruff check trainer tests bench entrypoint.py
	$(BIN)/mypy

# The lint, then every test, on two pytest-xdist workers: while one waits on a subprocess, a
# server or a socket, the other computes (tests that share a fixture stay on one worker).
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup

# Every backbone family BACKBONE accepts, exported to every format and checked (make test runs
# only the families whose conversion needed special handling).
test-exports: venv
	$(BIN)/python -m pytest -m exports tests/serving/test_families.py

# Mutation testing (mutmut, the `mutate` extra): the modules and fast tests that [tool.mutmut] in
# pyproject.toml names, then killed/survived per module and the survivors (docs/development.md).
# Not part of make test.
mutate: venv
	$(BIN)/pip install --quiet -e '.[mutate]'
	BIN=$(BIN) bash scripts/mutate.sh

# Builds the Dockerfile with buildah and runs a tiny job in it against S3 on loopback (root).
container-test: venv
	bash scripts/container-test.sh

# Figures in BENCHMARKS.md, measured side by side on this machine.
bench: venv
	$(BIN)/python bench/bench.py

# Removes .venv (make it anew with another interpreter: make clean; make run PYTHON=...),
# ./runs and the local S3 server's files.
clean:
	rm -rf $(VENV) runs s3-data *.egg-info build mutants
include mk/deploy.mk
