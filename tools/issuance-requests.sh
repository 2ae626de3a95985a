#!/usr/bin/env bash
# Counts the API requests the operator spends per Agent on activation and first issuance, the way
# bench/issuance.rs sets it up but small enough to repeat while changing the controller: N Agents are created
# while the operator is stopped, then the operator is started and runs until every Agent has its
# <agent>-credentials Secret and reports credentials in its status. The API server's apiserver_request_total is
# read before the start, at that point, and again after a settle period (so writes that react to the
# operator's own status echoes are counted too), and the differences are printed per Agent by verb/resource.
# The script's own polling (kubectl list of Secrets and Agents) shows up as LIST rows; ignore those.
#
# Usage: tools/issuance-requests.sh [agents (100)] [settle seconds (10)]
# Env: KUBECONFIG (default .local/cluster/kubeconfig), KUBECTL, AGENTIAM_BIN (default target/debug/agentiam).
# Needs a running cluster with the CRDs installed (tools/cluster.sh up; kubectl apply --server-side -f crds/).
set -euo pipefail

LOG_TAG=requests
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

agents=${1:-100}
settle=${2:-10}
export KUBECONFIG=${KUBECONFIG:-$AGENTIAM_ROOT/.local/cluster/kubeconfig}
kubectl=${KUBECTL:-$KUBE_BIN_DIR/kubectl}
bin=${AGENTIAM_BIN:-$AGENTIAM_ROOT/target/debug/agentiam}
k() { "$kubectl" "$@"; }
[ -x "$bin" ] || die "no operator binary at $bin (cargo build --bin agentiam)"

ns=requests-$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
work=$(mktemp -d)
operator=
cleanup() {
  if [ -n "$operator" ]; then
    kill -TERM "$operator" 2>/dev/null || true
    wait "$operator" 2>/dev/null || true
  fi
  # Without the operator nobody removes the archive finalizer; strip it so the namespace can go.
  k -n "$ns" get agents -o name 2>/dev/null |
    xargs -r -n 50 "$kubectl" -n "$ns" patch --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
  k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

k create namespace "$ns" >/dev/null
for i in $(seq -f '%04g' 1 "$agents"); do
  cat <<EOF
---
apiVersion: agentiam.dev/v1alpha1
kind: Agent
metadata:
  name: agent-$i
spec:
  owner: {kind: User, name: alice@example.com}
  purpose: "benchmark agent: answers support tickets"
  credentials: {audiences: ["https://tickets.example.com", "https://crm.example.com"], x509: false}
EOF
done >"$work/agents.yaml"
k -n "$ns" create -f "$work/agents.yaml" >/dev/null
log "$agents Agents created in $ns with the operator stopped"

# apiserver_request_total summed by verb and resource[/subresource], one "verb resource count" line each.
scrape() {
  k get --raw /metrics | awk '
    /^apiserver_request_total\{/ {
      verb = res = grp = sub_ = ""
      if (match($0, /verb="[^"]*"/)) verb = substr($0, RSTART + 6, RLENGTH - 7)
      if (match($0, /[{,]resource="[^"]*"/)) res = substr($0, RSTART + 11, RLENGTH - 12)
      if (match($0, /group="[^"]*"/)) grp = substr($0, RSTART + 7, RLENGTH - 8)
      if (match($0, /subresource="[^"]*"/)) sub_ = substr($0, RSTART + 13, RLENGTH - 14)
      r = (grp == "" ? res : res "." grp) (sub_ == "" ? "" : "/" sub_)
      n[verb " " r] += $NF
    }
    END { for (key in n) print key, n[key] }'
}
# Per-Agent difference between two scrapes, largest first.
diff_per_agent() {
  awk -v n="$agents" '
    NR == FNR { before[$1 " " $2] = $3; next }
    { d = $3 - before[$1 " " $2]; if (d >= 1) printf "  %-7s %-45s %8d  %6.2f\n", $1, $2, d, d / n }
  ' "$1" "$2" | sort -k4 -rn
}

scrape >"$work/before"
RUST_LOG=${RUST_LOG:-info,kube=warn,tower=warn,hyper=warn} "$bin" --log-format text run \
  --namespace "$ns" --watch-namespace "$ns" \
  --http-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --issuer-url http://127.0.0.1:1 --http-plaintext \
  --webhook false --audit-stdout false --audit-log "$work/audit/audit.jsonl" \
  2>"$work/operator.log" &
operator=$!
start=$EPOCHREALTIME

count_secrets() {
  k -n "$ns" get secrets -l agentiam.dev/agent -o name 2>/dev/null | grep -c -- '-credentials$' || true
}
count_status() {
  k -n "$ns" get agents -o jsonpath='{range .items[*]}{.status.credentials.secretName}{"\n"}{end}' |
    grep -c . || true
}
until [ "$(count_secrets)" -ge "$agents" ]; do
  kill -0 "$operator" 2>/dev/null || { tail -20 "$work/operator.log" >&2; die "the operator exited"; }
  sleep 0.2
done
secrets_after=$(elapsed "$start")
until [ "$(count_status)" -ge "$agents" ]; do
  kill -0 "$operator" 2>/dev/null || { tail -20 "$work/operator.log" >&2; die "the operator exited"; }
  sleep 0.5
done
scrape >"$work/done"
status_after=$(elapsed "$start")
sleep "$settle"
scrape >"$work/settled"

echo "$agents Secrets after ${secrets_after}s, every status with credentials after ${status_after}s"
echo "requests until every Agent reports credentials (verb, resource, total, per Agent):"
diff_per_agent "$work/before" "$work/done"
echo "requests in the ${settle}s after that:"
diff_per_agent "$work/done" "$work/settled"
echo "operator warnings and errors:"
grep -E ' (WARN|ERROR) ' "$work/operator.log" | sed 's/^/  /' | tail -20 || true
