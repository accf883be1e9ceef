# mlserve: every target sets up its own environment first (virtualenv, pinned packages, Debian tools).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# ghz loads the gRPC endpoint in `make bench`; built from the Go module proxy when a Go toolchain is present.
GHZ_VERSION := v0.120.0
GHZ := build/bin/ghz
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test engine cluster cluster-down demo bench bench-rollout soak render clean

setup: $(STAMP)

$(STAMP): requirements.txt service/requirements.txt scripts/requirements-checkov.txt policy/requirements.txt scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

# The engine from Go modules, cached by version: the control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler), kwok, the Pulumi CLI and the Kubernetes provider (engine/build.py).
engine: setup
	$(PY) -m engine build

test: setup engine
	$(PY) -m pytest

cluster: engine
	$(PY) -m engine up

cluster-down: setup
	$(PY) -m engine down

demo: setup
	$(PY) -m rollout demo --report .mlserve/demo-report.json

bench: setup $(GHZ)
	$(PY) -m bench.serving
	$(PY) -m bench.explain

# Without Go the bench still runs and reports the gRPC rows as skipped, with the reason.
$(GHZ):
	@if [ -x "$(GO)" ]; then GOBIN=$(CURDIR)/build/bin GOFLAGS=-mod=mod "$(GO)" install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION) \
	  || echo "bench: building ghz failed; the gRPC rows will be skipped" >&2; \
	else echo "bench: no Go toolchain to build ghz; the gRPC rows will be skipped" >&2; fi

bench-rollout: setup
	$(PY) -m bench.rollout

# A benchmark, not a test: 10 minutes of mixed traffic, then 2x (SOAK_ARGS="--minutes 1" for a short run).
soak: setup
	$(PY) -m bench.soak $(SOAK_ARGS)

render: setup
	$(PY) -m infra.render --stack $${STACK:-prod} --out build/$${STACK:-prod}

clean:
	rm -rf $(VENV) build .pytest_cache
