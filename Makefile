# PulmoScreen: `make demo` screens sample DICOMs on embedded defaults; `make test` runs lint + tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint unit integration faults services chromium dicom3tools bench bench-model bench-inference bench-ingest bench-content bench-heatmap bench-report bench-receive docs wheel-test clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/pulmoscreen demo

services:
	bash scripts/ensure-services.sh

# The report tests render the HTML summary in headless Chromium (Debian package).
chromium:
	bash scripts/ensure-chromium.sh

# The DICOM result tests validate every SR and SC with dciodvfy (Debian's dicom3tools).
dicom3tools:
	bash scripts/ensure-dicom3tools.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

unit: install dicom3tools
	$(BIN)/pytest tests/unit

integration: install services chromium dicom3tools
	$(BIN)/pytest tests/integration

# The fault suite (docs/faults.md): starts its own Redis and PostgreSQL, drives the product's
# processes through faults; PULMO_FAULT_STUDIES (300) studies per scenario. Not part of `test`.
faults: install
	$(BIN)/pytest tests/faults

# The built wheel, installed into a fresh virtualenv outside the source tree, migrates and
# screens on SQLite with the shipped model (scripts/wheel-test.sh; about a minute).
wheel-test: install
	bash scripts/wheel-test.sh

test: install services chromium dicom3tools lint
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/throughput.py

bench-model: install
	$(BIN)/python benchmarks/model_throughput.py

bench-inference: install
	$(BIN)/python benchmarks/inference.py

bench-ingest: install
	$(BIN)/python benchmarks/header_scan.py

bench-content: install
	$(BIN)/python benchmarks/content_check.py

# a flagged image's heatmap against the plain inference per image (docs/explain.md)
bench-heatmap: install
	$(BIN)/python benchmarks/heatmap.py

bench-report: install
	$(BIN)/python -m benchmarks.report_speed

# pulmoscreen receive: instances/s over one DICOM association and over four (docs/performance.md).
bench-receive: install
	$(BIN)/python -m benchmarks.receive

# docs/configuration.md is written from Settings (pulmoscreen/config.py); a unit test checks it.
docs: install
	$(BIN)/python -m pulmoscreen.config_doc docs/configuration.md

clean:
	rm -rf var .pytest_cache .ruff_cache
