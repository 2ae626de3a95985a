#!/usr/bin/env bash
# Runs the e2e tier (tests/e2e) against the local control plane, bringing it up when it is not running and
# taking it down again afterwards if this script started it (KEEP_CLUSTER=1 keeps it).
# EXISTING_KUBECONFIG=<path> runs against another cluster instead. E2E_REQUIRED=1 turns "no control plane"
# into a failure instead of a skip; CI sets it.
set -euo pipefail

LOG_TAG=e2e
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
cd "$AGENTIAM_ROOT"

required=${E2E_REQUIRED:-0}
cargo=${CARGO:-cargo}
started_here=0

if [ -n "${EXISTING_KUBECONFIG:-}" ]; then
  kubeconfig=$EXISTING_KUBECONFIG
else
  kubeconfig=${AGENTIAM_CLUSTER_DIR:-$AGENTIAM_ROOT/.local/cluster}/kubeconfig
  if ! tools/cluster.sh status >/dev/null 2>&1; then
    if ! tools/cluster.sh up; then
      if [ "$required" = 1 ]; then die "E2E_REQUIRED=1 and the local control plane did not come up"; fi
      log "SKIPPED: the local control plane did not come up (set E2E_REQUIRED=1 to make this a failure)"
      exit 0
    fi
    started_here=1
  fi
fi
cleanup() {
  local rc=$?
  if [ "$started_here" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ] && ! tools/cluster.sh down; then
    # `down` fails when the node left containers, mounts, rules or its bridge behind.
    log "error: tools/cluster.sh down failed (above)"
    [ "$required" = 1 ] && [ "$rc" = 0 ] && exit 1
  fi
}
trap cleanup EXIT

kubectl=$KUBE_BIN_DIR/kubectl
[ -x "$kubectl" ] || kubectl=$(command -v kubectl) || die "no kubectl"
log "installing CRDs into the cluster of $kubeconfig"
KUBECONFIG=$kubeconfig "$kubectl" apply --server-side --force-conflicts --field-manager=agentiam-e2e -f crds/ >/dev/null
KUBECONFIG=$kubeconfig "$kubectl" wait --for=condition=Established --timeout=60s -f crds/ >/dev/null

# PyJWT is one of the independent JWT implementations the e2e tests verify our tokens with; it lives in a
# virtualenv in the tools cache (tools/python-env.sh), never in the system Python.
AGENTIAM_PYTHON=$(tools/python-env.sh)
export AGENTIAM_PYTHON

# promtool checks the operator's live /metrics (tests/e2e/supervision.rs).
[ -x "$PROMTOOL_BIN" ] || tools/build-tools.sh promtool
export PROMTOOL=$PROMTOOL_BIN
# nginx (Debian's, extracted) asks the ext_authz endpoint with auth_request (tests/e2e/gateway.rs).
[ -x "$NGINX_BIN" ] || tools/build-tools.sh nginx
export AGENTIAM_NGINX=$NGINX_BIN
export AGENTIAM_E2E_KUBECONFIG=$kubeconfig KUBECTL=$kubectl HELM=${HELM:-$HELM_BIN} E2E_REQUIRED=$required
# Tests that need pods to run (an A2A agent card served by one) use the test-agent image on the local node.
if [ -z "${EXISTING_KUBECONFIG:-}" ] && [ -f "${AGENTIAM_CLUSTER_DIR:-$AGENTIAM_ROOT/.local/cluster}/node.on" ]; then
  AGENTIAM_E2E_AGENT_IMAGE=$(tools/images.sh import agent-python)
  export AGENTIAM_E2E_AGENT_IMAGE
fi
# Only the local control plane's API server may be restarted by a test (tests/e2e/outage.rs); unset, such
# tests skip.
if [ -z "${EXISTING_KUBECONFIG:-}" ]; then
  export AGENTIAM_E2E_CLUSTER_DIR=${AGENTIAM_CLUSTER_DIR:-$AGENTIAM_ROOT/.local/cluster}
else
  unset AGENTIAM_E2E_CLUSTER_DIR
fi
start=$EPOCHREALTIME
# Each test runs its own operator in its own namespace, so tests run in parallel; 2 cores make 4 threads
# a good balance between wall time and flakiness from CPU starvation.
"$cargo" test --locked --test e2e -- --test-threads="${E2E_THREADS:-4}" "$@"
# Tests marked #[ignore] disturb the shared cluster (one restarts kube-apiserver), so they run alone,
# after the parallel ones and before the chart check. A filter applies to both passes.
"$cargo" test --locked --test e2e -- --ignored --test-threads=1 "$@"
log "e2e tests finished in $(elapsed "$start")s"
# The chart check runs the operator cluster-wide under the chart's ServiceAccount, so it runs after the
# parallel tests (whose namespaces it would otherwise reconcile too). Skipped when a test filter is given.
if [ $# -eq 0 ]; then
  [ -x "$HELM_BIN" ] || tools/build-tools.sh helm
  tools/chart-check.sh --install
  # The in-cluster tier needs the local node (tools/node.sh); where it cannot run, cluster.sh said why, and
  # E2E_REQUIRED=1 already failed `up`.
  if [ -n "${EXISTING_KUBECONFIG:-}" ]; then
    log "SKIPPED the in-cluster tier: it runs on the local node only"
  elif [ -f "${AGENTIAM_CLUSTER_DIR:-$AGENTIAM_ROOT/.local/cluster}/node.on" ]; then
    tools/in-cluster-check.sh
    # The suite again with each test's operator as a Pod from the image the check built (tests/e2e/pod.rs).
    tools/e2e-in-cluster.sh
  elif [ "$required" = 1 ]; then
    die "E2E_REQUIRED=1 and the local cluster runs without its node: the in-cluster tier cannot run"
  else
    log "SKIPPED the in-cluster tier: the local cluster has no node (see tools/cluster.sh up)"
  fi
  log "e2e tier (tests + chart + in-cluster check and pass) finished in $(elapsed "$start")s"
fi
