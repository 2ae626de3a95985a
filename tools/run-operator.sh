#!/usr/bin/env bash
# `make run`: install the CRDs, run the operator in the foreground against a cluster, apply config/samples,
# and print how to look at the result. Ctrl-C stops the operator cleanly (it publishes a final checkpoint).
# Usage: tools/run-operator.sh <kubeconfig> <kubectl> <operator-namespace> <samples-namespace> <run-dir>
set -euo pipefail

LOG_TAG=run
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

[ $# -eq 5 ] || die "usage: $0 <kubeconfig> <kubectl> <operator-namespace> <samples-namespace> <run-dir>"
export KUBECONFIG=$1
kubectl=$2 op_ns=$3 samples_ns=$4 run_dir=$5
[ -r "$KUBECONFIG" ] || die "kubeconfig $KUBECONFIG not found (run 'make cluster-up' or set EXISTING_KUBECONFIG)"
k() { "$kubectl" "$@"; }

cd "$AGENTIAM_ROOT"
mkdir -p "$run_dir"
log "installing CRDs"
k apply --server-side --field-manager=agentiam-make -f crds/ >/dev/null
k wait --for=condition=Established --timeout=60s -f crds/ >/dev/null
for ns in "$op_ns" "$samples_ns"; do
  k get namespace "$ns" >/dev/null 2>&1 || k create namespace "$ns" >/dev/null
done

audit_log=$run_dir/audit.jsonl
http_port=${AGENTIAM_HTTP_PORT:-8081}
webhook_port=${AGENTIAM_WEBHOOK_PORT:-9443}
admin_port=${AGENTIAM_ADMIN_PORT:-8082}
log "starting the operator (logs: $run_dir/operator.log; audit records stream below as JSON lines)"
./target/debug/agentiam run \
  --namespace "$op_ns" \
  --audit-log "$audit_log" \
  --http-addr "127.0.0.1:$http_port" \
  --admin-addr "127.0.0.1:$admin_port" \
  --issuer-url "https://127.0.0.1:$http_port" \
  --webhook-listen "127.0.0.1:$webhook_port" \
  --webhook-url "https://127.0.0.1:$webhook_port" \
  --checkpoint-interval 10s \
  2> >(tee -a "$run_dir/operator.log" >&2) &
operator=$!
stop() {
  kill -TERM "$operator" 2>/dev/null || true
  wait "$operator" 2>/dev/null || true
  # The operator keeps its fail-closed webhook configurations on shutdown (labelled pods and every change to
  # agentiam objects are refused while it is down). For a local run that pointed at 127.0.0.1, remove them,
  # or later runs and tests on this cluster would be refused by webhooks that are gone.
  k delete mutatingwebhookconfiguration,validatingwebhookconfiguration "agentiam-$op_ns" --ignore-not-found >/dev/null 2>&1 || true
}
trap stop INT TERM
trap 'stop' EXIT

for _ in $(seq 1 100); do
  grep -q "operator running" "$run_dir/operator.log" 2>/dev/null && break
  kill -0 "$operator" 2>/dev/null || die "the operator exited during startup; see $run_dir/operator.log"
  sleep 0.1
done

# The HTTP API serves TLS with the operator's own certificate; its CA is published for clients.
api_ca=$run_dir/api-ca.crt
k get configmap agentiam-api-ca -n "$op_ns" -o jsonpath='{.data.ca\.crt}' >"$api_ca" ||
  log "could not read the HTTP API's CA (ConfigMap $op_ns/agentiam-api-ca)"

log "applying config/samples to namespace $samples_ns"
# The Delegation last: admission refuses a grant to an Agent that is not Active yet.
for sample in agent agentpolicy revocation; do
  k apply -n "$samples_ns" -f "config/samples/agentiam.dev_v1alpha1_$sample.yaml" >&2
done
if k wait -n "$samples_ns" --for=jsonpath='{.status.phase}'=Active --timeout=60s agent/support-triage >/dev/null; then
  log "sample Agent support-triage is Active"
  # You (the kubeconfig's user) are the grantor; the admin user holds every verb, "delegate" included.
  k apply -n "$samples_ns" -f config/samples/agentiam.dev_v1alpha1_delegation.yaml >&2 ||
    log "the sample Delegation was refused; see the message above"
else
  log "sample Agent support-triage did not become Active within 60s; see $run_dir/operator.log"
fi
# A workload no Agent covers, holding an LLM key: discovery records it as a shadow agent.
k apply -n "$samples_ns" -f config/samples/discovery_shadow-workload.yaml >&2
if k wait -n "$samples_ns" --for=jsonpath='{.status.phase}'=Discovered --timeout=30s \
  agent/deployment-ticket-summarizer >/dev/null 2>&1; then
  log "discovery recorded the sample workload ticket-summarizer as the shadow agent deployment-ticket-summarizer"
else
  log "the sample shadow agent deployment-ticket-summarizer did not appear within 30s; see $run_dir/operator.log"
fi
k get agents -n "$samples_ns" -o wide >&2
k get delegations -n "$samples_ns" -o wide >&2

cat >&2 <<TXT

The operator runs in the foreground; Ctrl-C stops it. In another terminal:

  export KUBECONFIG=$KUBECONFIG
  export PATH=$AGENTIAM_ROOT/target/debug:$KUBE_BIN_DIR:\$PATH   # kubectl and the kubectl-agentiam plugin
  kubectl get agents -A -o wide
  kubectl describe agent support-triage -n $samples_ns
  kubectl get delegation alice-refunds-shift -n $samples_ns -o jsonpath='{.status}'   # grantor and chain
  kubectl agentiam audit verify --log $audit_log --operator-namespace $op_ns
  kubectl agentiam audit trace support-triage -n $samples_ns --log $audit_log
  kubectl agentiam discover -n $samples_ns            # shadow and registered agents, and why
  kubectl get secret support-triage-credentials -n $samples_ns -o jsonpath='{.metadata.annotations}'
  curl -s --cacert $api_ca https://127.0.0.1:$http_port/.well-known/openid-configuration
  kubectl get secret support-triage-credentials -n $samples_ns \
    -o jsonpath='{.data.token-https___tickets\.example\.com}' | base64 -d | \
    kubectl agentiam token verify --audience https://tickets.example.com \
      --issuer-url https://127.0.0.1:$http_port --cacert $api_ca

TXT
wait "$operator"
