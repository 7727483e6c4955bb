# skuforge — every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The test suite trains and exports small models, so the dev set-up includes the diffusion extra.
EXTRAS ?= cpu,dev,diffusion
KAFKA_DIR := deploy/kafka
KAFKA_DATA ?= var/kafka
KAFKA_PORT ?= 9092
KAFKA_CONTROLLER_PORT ?= 9093

.PHONY: help setup test test-fast lint bench kafka-up kafka-down schemas clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(KAFKA_DIR)/lib/.resolved  ## venv, Python dependencies, Kafka jars (idempotent)

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@touch $@

$(KAFKA_DIR)/lib/.resolved: $(KAFKA_DIR)/pom.xml
	cd $(KAFKA_DIR) && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib -DincludeScope=runtime
	@touch $@

test: setup  ## the full suite (what CI runs): starts its own Kafka, moto S3 and servers
	$(BIN)/python -m pytest

test-fast: setup  ## the suite without tests marked slow
	$(BIN)/python -m pytest -m "not slow"

lint: setup  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: setup  ## benchmarks; results go to bench/results/*.json (installs rembg, for comparison only)
	$(BIN)/python -m pip install -q rembg
	$(BIN)/python -m bench.bus
	$(BIN)/python -m bench.matting

schemas: setup  ## regenerate schemas/json/ from the pydantic models
	$(BIN)/python -m schemas.jsonschema

kafka-up: setup  ## start a local single-node Kafka (KRaft) in the background
	$(BIN)/python -m shared.broker start --data-dir $(KAFKA_DATA) --port $(KAFKA_PORT) --controller-port $(KAFKA_CONTROLLER_PORT)

kafka-down:  ## stop the local Kafka started by kafka-up
	$(BIN)/python -m shared.broker stop --data-dir $(KAFKA_DATA)

clean:  ## remove local state (var/), keep the venv and jars
	rm -rf var demo-out
