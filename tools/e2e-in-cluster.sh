#!/usr/bin/env bash
# The e2e suite's in-cluster pass (tests/e2e/pod.rs): the same tests as tools/e2e.sh, with each test's
# operator run as a Pod on the local node, from the image tools/images.sh builds out of target/release/agentiam,
# under the chart's ServiceAccount and RBAC, reached through a Service. Tests that only make sense for a
# process on loopback skip themselves here (process_only!, each with its reason). The tests marked #[ignore]
# (they restart the API server) run only in the process pass.
#
# Usage: tools/e2e-in-cluster.sh [cargo test filter]   (needs a cluster with its node: AGENTIAM_NODE=1
# tools/cluster.sh up as root; tools/e2e.sh runs this after the chart and in-cluster checks.)
set -euo pipefail

LOG_TAG=e2e-in-cluster
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
cd "$AGENTIAM_ROOT"

state=${AGENTIAM_CLUSTER_DIR:-$AGENTIAM_ROOT/.local/cluster}
kubeconfig=$state/kubeconfig
tools/cluster.sh status >/dev/null 2>&1 || die "no local cluster is running (tools/cluster.sh up)"
[ -f "$state/node.on" ] || die "the cluster in $state runs without its node: the in-cluster pass cannot run"
[ -x "$HELM_BIN" ] || tools/build-tools.sh helm
[ -x "$PROMTOOL_BIN" ] || tools/build-tools.sh promtool
[ -x "$NGINX_BIN" ] || tools/build-tools.sh nginx

kubectl=$KUBE_BIN_DIR/kubectl
KUBECONFIG=$kubeconfig "$kubectl" apply --server-side --force-conflicts --field-manager=agentiam-e2e -f crds/ >/dev/null
KUBECONFIG=$kubeconfig "$kubectl" wait --for=condition=Established --timeout=60s -f crds/ >/dev/null

t=$EPOCHREALTIME
cargo build --release --locked --bin agentiam --quiet
image=$(tools/images.sh import operator)
AGENTIAM_E2E_AGENT_IMAGE=$(tools/images.sh import agent-python)
export AGENTIAM_E2E_AGENT_IMAGE
log "operator image $image ready in $(elapsed "$t")s"

AGENTIAM_PYTHON=$(tools/python-env.sh)
export AGENTIAM_PYTHON PROMTOOL=$PROMTOOL_BIN AGENTIAM_NGINX=$NGINX_BIN HELM=$HELM_BIN KUBECTL=$kubectl E2E_REQUIRED=${E2E_REQUIRED:-0}
export AGENTIAM_E2E_KUBECONFIG=$kubeconfig AGENTIAM_E2E_OPERATOR_IMAGE=$image
export AGENTIAM_E2E_POD_LOGS=$state/node/pod-logs AGENTIAM_E2E_CRICTL=$CRICTL_BIN
export AGENTIAM_E2E_CRI_ENDPOINT=unix://$NODE_CRI_SOCKET AGENTIAM_E2E_HOST_IP=$NODE_IP
# No test restarts the API server here (those are #[ignore] and run in the process pass only).
unset AGENTIAM_E2E_CLUSTER_DIR
start=$EPOCHREALTIME
cargo test --locked --test e2e -- --test-threads="${E2E_THREADS:-4}" "$@"
log "in-cluster pass finished in $(elapsed "$start")s"
