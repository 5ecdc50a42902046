# jobworker: the commands users need are `make up` (run in Docker), `make run` (run without Docker) and
# `make test` (test everything).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
# xdist workers for the unit suite; e2e uses fewer, each worker starts its own container.
UNIT_WORKERS ?= auto
E2E_WORKERS ?= 2

.PHONY: help venv proto lint unit fleet e2e test wheels image up down run bench clean fleet-up fleet-down

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed  ## create .venv with the package and dev tools

proto: $(VENV)/.installed  ## regenerate jobworker/api from proto/ (never edit jobworker/api by hand)
	rm -rf build/proto && mkdir -p build/proto
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -I proto --python_out=build/proto --grpc_python_out=build/proto \
		--mypy_out=build/proto --mypy_grpc_out=build/proto proto/jobworker/v1/jobworker.proto
	for f in build/proto/jobworker/v1/*.py build/proto/jobworker/v1/*.pyi; do \
		sed -e 's/^from jobworker\.v1 import/from jobworker.api import/' \
		    -e 's/^import jobworker\.v1\.jobworker_pb2$$/import jobworker.api.jobworker_pb2/' \
		    -e 's/jobworker\.v1\.jobworker_pb2\./jobworker.api.jobworker_pb2./g' \
		    "$$f" > jobworker/api/$$(basename "$$f"); \
	done
	# etcd's own protos (proto/etcd, vendored) for the fleet's etcd client: a generated package of their own.
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -I proto --python_out=build/proto --grpc_python_out=build/proto \
		--mypy_out=build/proto --mypy_grpc_out=build/proto proto/etcd/kv.proto proto/etcd/auth.proto proto/etcd/rpc.proto
	for f in build/proto/etcd/*.py build/proto/etcd/*.pyi; do \
		sed -e 's/^from etcd import/from jobworker.etcdpb import/' -e 's/^import etcd\.\([a-z_]*\)_pb2$$/import jobworker.etcdpb.\1_pb2/' \
		    -e 's/\betcd\.\([a-z_]*\)_pb2\./jobworker.etcdpb.\1_pb2./g' "$$f" > jobworker/etcdpb/$$(basename "$$f"); \
	done

lint: $(VENV)/.installed  ## ruff + mypy --strict
	$(VENV)/bin/ruff check jobworker pki tests bench dev
	$(VENV)/bin/ruff format --check jobworker pki tests bench dev
	$(VENV)/bin/mypy

unit: $(VENV)/.installed  ## unit tests without the slow ones (no Docker; root-only tests skip when not root)
	$(PYTEST) -n $(UNIT_WORKERS) -m "not slow" tests/unit

slow: $(VENV)/.installed  ## the slow unit tests (1 GiB of output, RSA-4096 keys); make test runs them too
	$(PYTEST) -n $(UNIT_WORKERS) -m slow tests/unit

fleet: $(VENV)/.installed  ## the fleet suite: 3 etcd members + 3 jw-servers on 127.0.0.2-4 (needs etcd-server)
	$(PYTEST) -p no:xdist tests/fleet

e2e: $(VENV)/.installed  ## end-to-end tests against the Docker image (needs a Docker engine)
	$(PYTEST) -n $(E2E_WORKERS) --dist loadfile tests/e2e

test: unit slow fleet e2e  ## the whole suite

# Docker image and local deployment (docker/, compose.yaml). The host's pip downloads the wheels
# (make wheels), so pip inside the image build needs no network and no CA bundle.
IMAGE ?= jobworker:dev
BASE_IMAGE ?= python:3.11-slim-bookworm
LOCAL_BASE_IMAGE ?= jobworker-base:bookworm

wheels:  ## download the dependencies' wheels for the image into docker/wheels (host pip)
	bash docker/build-wheels.sh

image:  ## build the Docker image from wheels (falls back to a Debian-built base when the base cannot be pulled)
	IMAGE='$(IMAGE)' BASE_IMAGE='$(BASE_IMAGE)' LOCAL_BASE_IMAGE='$(LOCAL_BASE_IMAGE)' bash docker/build-image.sh

.PHONY: base-image
base-image:  ## build the local base image from Debian packages (air-gapped hosts; root + debootstrap)
	bash docker/build-base.sh '$(LOCAL_BASE_IMAGE)'

up: image  ## run pki + server with docker compose (certs in ./certs, server on 127.0.0.1:50051)
	JW_IMAGE='$(IMAGE)' JW_UID=$$(id -u) JW_GID=$$(id -g) docker compose up -d --wait --wait-timeout 120

fleet-up: image  ## a 3-node fleet with 3 etcd members (compose.fleet.yaml; certs in ./certs-fleet, nodes on 127.0.0.1:50061-50063)
	JW_IMAGE='$(IMAGE)' JW_UID=$$(id -u) JW_GID=$$(id -g) docker compose -f compose.fleet.yaml up -d --build --wait --wait-timeout 180

fleet-down:  ## stop the compose fleet (its volumes and ./certs-fleet are kept)
	JW_IMAGE='$(IMAGE)' docker compose -f compose.fleet.yaml down

down:  ## stop the compose deployment (the state volume and ./certs are kept)
	JW_IMAGE='$(IMAGE)' docker compose down

# RUN_ARGS: options of dev/run.py (`--listen HOST:PORT`, `--certs DIR`, `--state-dir DIR`, `--unprivileged`,
# then `-- JW-SERVER-OPTIONS`); `$(PY) dev/run.py --help` lists them.
run: $(VENV)/.installed  ## run jw-server here without Docker (dev certs in ./certs, a jw profile, 127.0.0.1:50051)
	@$(PY) dev/run.py $(RUN_ARGS)

bench: $(VENV)/.installed  ## benchmarks against their baselines (root, < 10 min; BENCH_ARGS=--quick), JSON in bench/results/
	$(PY) bench/run.py $(BENCH_ARGS)

clean:  ## remove build artefacts
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
