# agentiam: `make run` and `make test` are the two commands; `make help` lists the rest.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

include tools/versions.env

# AGENTIAM_TOOLS_CACHE in the environment (what the README and tools/ honour) picks it too.
TOOLS_CACHE ?= $(or $(AGENTIAM_TOOLS_CACHE),$(HOME)/.cache/agentiam-tools)
KUBE_BIN    := $(TOOLS_CACHE)/kubernetes-$(KUBERNETES_VERSION)
KUBECTL     ?= $(KUBE_BIN)/kubectl
HELM        ?= $(TOOLS_CACHE)/helm-$(HELM_VERSION)/helm
CLUSTER_DIR ?= $(CURDIR)/.local/cluster
LOCAL_KUBECONFIG := $(CLUSTER_DIR)/kubeconfig
# Set EXISTING_KUBECONFIG=/path/to/kubeconfig to use an existing cluster instead of the local control plane.
EXISTING_KUBECONFIG ?=
RUN_KUBECONFIG = $(if $(EXISTING_KUBECONFIG),$(EXISTING_KUBECONFIG),$(LOCAL_KUBECONFIG))
OPERATOR_NAMESPACE ?= agentiam-system
SAMPLES_NAMESPACE ?= default
RUN_DIR     := $(CURDIR)/.local/run
CARGO       ?= cargo
export AGENTIAM_CLUSTER_DIR := $(CLUSTER_DIR)
export AGENTIAM_TOOLS_CACHE := $(TOOLS_CACHE)

##@ Everyday

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

.PHONY: run
run: build ## Bring up the local control plane (or use EXISTING_KUBECONFIG), install CRDs, run the operator with the samples.
	@if [ -z "$(EXISTING_KUBECONFIG)" ]; then tools/cluster.sh up; else echo "using existing cluster from $(EXISTING_KUBECONFIG)"; fi
	@tools/run-operator.sh "$(RUN_KUBECONFIG)" "$(KUBECTL)" "$(OPERATOR_NAMESPACE)" "$(SAMPLES_NAMESPACE)" "$(RUN_DIR)"

.PHONY: test
test: ## Run every test: unit, then e2e against the local control plane (E2E_REQUIRED=1 makes a missing one fail).
	AGENTIAM_PYTHON=$$(tools/python-env.sh) $(CARGO) test --locked --lib --bins --test crds --test interop
	@tools/e2e.sh

##@ Development

.PHONY: build
build: ## Build the operator and the kubectl plugin.
	$(CARGO) build --locked --bins

.PHONY: generate
generate: ## Regenerate crds/ from the Rust types and copy them into the chart.
	$(CARGO) run --locked --quiet --bin agentiam -- crdgen --out crds
	mkdir -p charts/agentiam/crds && rm -f charts/agentiam/crds/*.yaml && cp crds/*.yaml charts/agentiam/crds/

.PHONY: lint
lint: ## cargo fmt --check, clippy and rustdoc with warnings denied.
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path bench/cedar/Cargo.toml -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --no-deps --quiet
	tools/images.sh check-dockerfile

.PHONY: unit
unit: ## Unit tests only (no cluster needed; PyJWT comes from a virtualenv in the tools cache).
	AGENTIAM_PYTHON=$$(tools/python-env.sh) $(CARGO) test --locked --lib --bins --test crds --test interop

.PHONY: e2e
e2e: ## E2E tests only (brings the local control plane up when needed).
	@tools/e2e.sh

##@ Local control plane

.PHONY: tools
tools: ## Build kube-apiserver, kube-controller-manager, kubectl, etcd and helm into the tools cache (slow once).
	tools/build-tools.sh kubernetes etcd helm

.PHONY: cluster-up
cluster-up: ## Start etcd, kube-apiserver and kube-controller-manager on 127.0.0.1 (idempotent).
	tools/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop the local control plane processes this repo started.
	tools/cluster.sh down

.PHONY: cluster-status
cluster-status: ## Show the local control plane's state.
	tools/cluster.sh status

.PHONY: install-crds
install-crds: ## Install the CRDs into the cluster of RUN_KUBECONFIG.
	KUBECONFIG="$(RUN_KUBECONFIG)" "$(KUBECTL)" apply --server-side --field-manager=agentiam-make -f crds/
	KUBECONFIG="$(RUN_KUBECONFIG)" "$(KUBECTL)" wait --for=condition=Established --timeout=60s -f crds/

##@ Performance

.PHONY: bench
bench: ## Benchmarks side by side with their peers (openssl, raw Secret creates, TokenRequest, OPA, Cedar); BENCH_ONLY=jwt|issuance|authz|token|revocation|discovery -> bench/results/.
	@bench/run.sh
