#!/usr/bin/env bash
# The in-cluster tier, on the local node (tools/node.sh): what users get from `helm install`, tested the way they
# get it. It builds the operator image from target/release/agentiam (tools/images.sh), installs charts/agentiam
# with it into a throwaway namespace, and then checks, against the operator running as the chart's pod:
#   - the pod becomes Ready, and the admission webhooks are served through their Service;
#   - an agent pod labelled for its Agent starts, reads /var/run/secrets/agentiam.dev/ and calls the decision
#     API (through the operator's Service, verifying its TLS with the trust bundle) with its own JWT-SVID,
#     getting Allow and Deny as its AgentPolicy says;
#   - a renewal reaches the running pod (the kubelet updates the mounted token) before the old token expires;
#   - a pod of a non-Active agent is refused; an unlabelled pod is untouched;
#   - suspending the agent: its running pod gets Deny on its next call and the credentials leave its volume;
#   - `helm upgrade` with changed values rolls the operator pod and the audit log on its PersistentVolumeClaim
#     survives (the new pod appends to the same hash chain, `agentiam audit verify` in the pod);
#   - with podDisruptionBudget.enabled, an eviction of the operator pod is refused;
#   - `helm uninstall` leaves what NOTES.txt says it leaves.
#
# Usage: tools/in-cluster-check.sh        (needs a cluster with its node: tools/cluster.sh up as root)
# KEEP_CLUSTER=1 leaves a cluster it started running; KEEP_NAMESPACES=1 leaves the release and the namespaces
# of a failed run. Exits non-zero on any failure.
set -euo pipefail

LOG_TAG=in-cluster
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
cd "$AGENTIAM_ROOT"

state=${AGENTIAM_CLUSTER_DIR:-$AGENTIAM_ROOT/.local/cluster}
export KUBECONFIG=$state/kubeconfig
kubectl=$KUBE_BIN_DIR/kubectl
helm=$HELM_BIN
k() { "$kubectl" "$@"; }
started_here=0
if ! tools/cluster.sh status >/dev/null 2>&1; then
  tools/cluster.sh up
  started_here=1
fi
[ -f "$state/node.on" ] || die "the cluster in $state runs without its node (tools/cluster.sh up as root; see its log)"
[ -x "$helm" ] || tools/build-tools.sh helm

release=agentiam
ns=agentiam-ic-$RANDOM
agents=$ns-agents
work=$(mktemp -d)
cleanup() {
  local rc=$?
  if [ $rc != 0 ]; then
    log "FAIL (exit $rc); operator pod log tail:"
    k -n "$ns" logs deploy/$release --tail=40 2>/dev/null >&2 || true
    if [ "${KEEP_NAMESPACES:-0}" = 1 ]; then
      log "KEEP_NAMESPACES=1: leaving $ns and $agents (and the release) for a look"
      return
    fi
  fi
  "$helm" uninstall "$release" -n "$ns" --ignore-not-found --wait >/dev/null 2>&1 || true
  k delete mutatingwebhookconfiguration,validatingwebhookconfiguration "agentiam-$ns" --ignore-not-found >/dev/null 2>&1 || true
  k -n "$agents" get agents.agentiam.dev -o name 2>/dev/null |
    xargs -r "$kubectl" -n "$agents" patch --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
  k delete namespace "$ns" "$agents" --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1 || true
  rm -rf "$work"
  if [ "$started_here" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then tools/cluster.sh down || true; fi
  [ $rc != 0 ] || log "PASS"
}
trap cleanup EXIT

eventually() { # eventually <seconds> <what> <command...>
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "not within ${limit}s: $what"
    sleep 1
  done
}

# ---------------------------------------------------------------------------------------------------------------
log "building the images (release binary, operator image, test agent image)"
t=$EPOCHREALTIME
cargo build --release --locked --bin agentiam --quiet
image=$(tools/images.sh import operator)
agent_image=$(tools/images.sh import agent-python)
log "images ready in $(elapsed "$t")s: $image, $agent_image"

log "helm install $release into $ns"
t=$EPOCHREALTIME
"$helm" install "$release" charts/agentiam -n "$ns" --create-namespace --wait --timeout 180s \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never \
  --set podDisruptionBudget.enabled=true >/dev/null
# The newest operator pod (a rolled-out one may still be terminating beside it).
operator_pod() {
  k -n "$ns" get pods -l app.kubernetes.io/name=agentiam --sort-by=.metadata.creationTimestamp \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | tail -n 1
}
pod=$(operator_pod)
log "ok: operator pod $pod Ready $(elapsed "$t")s after helm install"

# The disruption budget refuses a voluntary eviction (what kubectl drain asks for).
printf '{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"%s","namespace":"%s"}}' "$pod" "$ns" >"$work/eviction.json"
if k create --raw "/api/v1/namespaces/$ns/pods/$pod/eviction" -f "$work/eviction.json" >"$work/eviction.out" 2>&1; then
  die "the operator pod was evicted despite its PodDisruptionBudget"
fi
grep -q "disruption budget" "$work/eviction.out" || die "eviction refused, but not by the budget: $(cat "$work/eviction.out")"
k -n "$ns" get networkpolicy "$release" >/dev/null || die "no NetworkPolicy $release"
log "ok: the PodDisruptionBudget refuses an eviction of the operator pod; NetworkPolicy $release is in place (not enforced by the node's bridge plugin)"

# The webhooks go through the Service: the operator registers service references, never URLs.
eventually 60 "the webhook configuration agentiam-$ns" k get mutatingwebhookconfiguration "agentiam-$ns"
svc_refs=$(k get mutatingwebhookconfiguration "agentiam-$ns" -o jsonpath='{range .webhooks[*]}{.clientConfig.service.name}{" "}{.clientConfig.url}{"\n"}{end}')
grep -q "^$release-webhook $" <<<"$svc_refs" || die "the webhooks do not name Service $release-webhook: $svc_refs"

# ---------------------------------------------------------------------------------------------------------------
k create namespace "$agents" >/dev/null
# The pod is Ready before the Service routes to it (the endpoint and the node's routing follow the pod's
# condition a moment later), and until then every write of an agentiam object is refused: its webhook fails
# closed. Wait for a server-side dry run (which goes through the webhook and records nothing) to be admitted.
admitted() { # admitted <what>: fails while the agentiam webhooks cannot be reached through their Service
  k -n "$agents" create --dry-run=server -f - <<EOF
apiVersion: agentiam.dev/v1alpha1
kind: Agent
metadata: {name: ic-probe}
spec:
  owner: {kind: User, name: alice@example.com}
  purpose: A dry run that probes the webhook, in the in-cluster check.
  environment: Development
  lifecycle: {desiredState: Suspended}
EOF
}
eventually 60 "the agentiam webhooks served through Service $release-webhook" admitted
audience=https://tickets.example.com
k -n "$agents" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: ic-agent}
---
apiVersion: agentiam.dev/v1alpha1
kind: AgentPolicy
metadata: {name: ic-agent-tickets}
spec:
  agents: {names: [ic-agent]}
  mode: Enforce
  rules:
    - {name: read-tickets, effect: Allow, actions: [read], resources: ["tickets:queue/*"]}
---
apiVersion: agentiam.dev/v1alpha1
kind: Agent
metadata: {name: ic-agent}
spec:
  owner: {kind: User, name: alice@example.com}
  purpose: Reads tickets, in the in-cluster check.
  environment: Development
  provenance: {model: claude-sonnet-4-5, modelProvider: anthropic, version: 1.0.0}
  workload: {serviceAccountName: ic-agent}
  policyRefs: [{name: ic-agent-tickets}]
  credentials: {audiences: ["$audience"], ttl: 3m}
  lifecycle: {desiredState: Active}
---
apiVersion: agentiam.dev/v1alpha1
kind: Agent
metadata: {name: ic-sleeper}
spec:
  owner: {kind: User, name: alice@example.com}
  purpose: Never activated, in the in-cluster check.
  environment: Development
  lifecycle: {desiredState: Suspended}
EOF
phase() { k -n "$agents" get agent "$1" -o jsonpath='{.status.phase}'; }
active() { [ "$(phase "$1")" = Active ]; }
eventually 60 "Agent ic-agent Active" active ic-agent
eventually 60 "Secret ic-agent-credentials" k -n "$agents" get secret ic-agent-credentials

agent_pod() { # agent_pod <name> <agent label or "">: the manifest on stdout
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  labels: {app: $1$([ -z "$2" ] || echo ", agentiam.dev/agent: $2")}
spec:
  serviceAccountName: $([ -n "$2" ] && echo ic-agent || echo default)
  terminationGracePeriodSeconds: 1
  securityContext: {runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, runAsNonRoot: true}
  containers:
    - name: agent
      image: $agent_image
      imagePullPolicy: Never
      command: [sleep, "3600"]
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
EOF
}

log "starting an agent pod labelled for Agent ic-agent"
agent_pod ic-agent ic-agent | k -n "$agents" apply -f - >/dev/null
k -n "$agents" wait --for=condition=Ready pod/ic-agent --timeout=90s >/dev/null
mounted=$(k -n "$agents" get pod ic-agent -o jsonpath='{.spec.volumes[?(@.name=="agentiam-credentials")].projected.sources[0].secret.name}')
[ "$mounted" = ic-agent-credentials ] || die "the webhook did not mount the credentials (got '$mounted')"

# What the agent runs: reads its token from the mounted file at every call, as docs/credentials.md says, and
# asks the decision API (the operator's Service, TLS verified with the CA from the trust bundle).
cat >"$work/agent.py" <<EOF
import base64, json, os, ssl, sys, urllib.request
d = "/var/run/secrets/agentiam.dev"
cmd = sys.argv[1]
token_file = os.path.join(d, "token-https___tickets.example.com")
if cmd == "ls":
    print(json.dumps(sorted(os.listdir(d))))
elif cmd == "claims":
    tok = open(token_file).read().strip()
    body = tok.split(".")[1]
    print(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode())
elif cmd == "authorize":
    tok = open(token_file).read().strip()
    ctx = ssl.create_default_context(cafile=os.path.join(d, "api-ca.crt"))
    req = urllib.request.Request("https://$release.$ns.svc/v1/authorize", method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"token": tok, "action": sys.argv[2], "resource": sys.argv[3]}).encode())
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        print(json.loads(r.read())["decision"])
EOF
in_agent() { k -n "$agents" exec -i ic-agent -- python3 - "$@" <"$work/agent.py"; }

files=$(in_agent ls)
log "the agent pod sees: $files"
grep -q '"token-https___tickets.example.com"' <<<"$files" || die "no token file in the pod: $files"
grep -q '"api-ca.crt"' <<<"$files" || die "no api-ca.crt in the pod (trust bundle): $files"
[ "$(in_agent authorize read tickets:queue/7)" = Allow ] || die "read tickets:queue/7 was not allowed"
[ "$(in_agent authorize delete tickets:queue/7)" = Deny ] || die "delete tickets:queue/7 was not denied"
log "ok: the agent pod read its token and got Allow (read) and Deny (delete) from the decision API"

# ---------------------------------------------------------------------------------------------------------------
# Renewal: the operator replaces the Secret at 80% of the 3 min lifetime; the kubelet must put the new token
# into the running pod before the old one expires.
claims0=$(in_agent claims)
iat0=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["iat"])' "$claims0")
exp0=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["exp"])' "$claims0")
log "waiting for the renewed token in the pod (old one: iat $iat0, exp $exp0)"
renewed() {
  local c; c=$(in_agent claims) || return 1
  [ "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["iat"])' "$c")" != "$iat0" ]
}
eventually 200 "a renewed token in the running pod" renewed
seen=$(date +%s)
[ "$seen" -lt "$exp0" ] || die "the pod saw the renewed token at $seen, after the old one expired ($exp0)"
[ "$(in_agent authorize read tickets:queue/7)" = Allow ] || die "the renewed token was not allowed"
log "ok: the running pod read a renewed token $((exp0 - seen))s before the old one expired"

# ---------------------------------------------------------------------------------------------------------------
log "a pod of a non-Active agent is refused; an unlabelled pod is untouched"
if agent_pod ic-sleeper-pod ic-sleeper | k -n "$agents" apply -f - >"$work/refused" 2>&1; then
  die "a pod of the Suspended agent ic-sleeper was admitted"
fi
grep -q "ic-sleeper" "$work/refused" || die "the refusal does not name the agent: $(cat "$work/refused")"
agent_pod plain "" | k -n "$agents" apply -f - >/dev/null
vols=$(k -n "$agents" get pod plain -o jsonpath='{.spec.volumes[*].name}')
[[ $vols != *agentiam-credentials* ]] || die "an unlabelled pod got the credentials volume"
k -n "$agents" wait --for=condition=Ready pod/plain --timeout=60s >/dev/null
log "ok: refused ($(head -c 160 "$work/refused")), and the unlabelled pod runs unchanged"

# ---------------------------------------------------------------------------------------------------------------
log "suspending ic-agent"
k -n "$agents" patch agent ic-agent --type=merge -p '{"spec":{"lifecycle":{"desiredState":"Suspended"}}}' >/dev/null
t=$EPOCHREALTIME
suspended_after=
# What the pod gets from each call, and when the operator's status said Suspended: a slow Deny then shows
# whether the operator or the decision path was late.
denied() {
  local answer
  [ -n "$suspended_after" ] || { [ "$(phase ic-agent)" != Suspended ] || suspended_after=$(elapsed "$t"); }
  answer=$(in_agent authorize read tickets:queue/7 2>&1 | tail -n 1) || true
  [ "$answer" = Deny ] || { echo "  $(elapsed "$t")s after the suspension: $answer" >>"$work/deny.log"; return 1; }
}
eventually 30 "Deny for the suspended agent's running pod" denied
[ ! -s "$work/deny.log" ] || { log "answers before the Deny:"; cat "$work/deny.log" >&2; }
log "ok: the running pod got Deny $(elapsed "$t")s after the suspension (status Suspended after ${suspended_after:-?}s)"
gone() { ! in_agent ls | grep -q '"token-'; }
eventually 150 "the credentials gone from the suspended agent's volume" gone
log "ok: the token files left the running pod's volume $(elapsed "$t")s after the suspension"

# ---------------------------------------------------------------------------------------------------------------
# The audit log as the operator wrote it: the operator's image has no shell or cat, so a pod that mounts the
# same claim (ReadWriteOnce is per node) reads it, as its writer's user.
audit_copy() { # audit_copy <file>
  local claim
  claim=$(k -n "$ns" get deploy "$release" -o jsonpath='{.spec.template.spec.volumes[?(@.name=="audit")].persistentVolumeClaim.claimName}')
  [ -n "$claim" ] || die "the operator Deployment mounts no audit claim"
  k -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: audit-reader}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {runAsUser: 65532, runAsGroup: 65532, runAsNonRoot: true}
  containers:
    - {name: reader, image: $agent_image, imagePullPolicy: Never, command: [sleep, "600"],
       volumeMounts: [{name: audit, mountPath: /audit, readOnly: true}]}
  volumes: [{name: audit, persistentVolumeClaim: {claimName: $claim, readOnly: true}}]
EOF
  k -n "$ns" wait --for=condition=Ready pod/audit-reader --timeout=60s >/dev/null
  k -n "$ns" exec audit-reader -- cat /audit/audit.jsonl >"$1"
  k -n "$ns" delete pod audit-reader --wait=false >/dev/null
}
verify() { # verify <file>: the chain, and the checkpoint the operator signed and published
  "$AGENTIAM_ROOT/target/debug/kubectl-agentiam" audit verify --log "$1" --operator-namespace "$ns" 2>&1
}
cargo build --locked --bin kubectl-agentiam --quiet
audit_copy "$work/audit-before.jsonl"
out=$(verify "$work/audit-before.jsonl") || die "audit verify failed before the upgrade: $out"
log "audit log before the upgrade: $(wc -l <"$work/audit-before.jsonl") records; $out"
log "helm upgrade with changed values (logLevel)"
"$helm" upgrade "$release" charts/agentiam -n "$ns" --wait --timeout 180s --reuse-values --set logLevel=debug >/dev/null
pod2=$(operator_pod)
[ "$pod2" != "$pod" ] || die "helm upgrade did not roll the operator pod"
k -n "$ns" wait --for=condition=Ready "pod/$pod2" --timeout=120s >/dev/null
# The roll (Recreate) leaves the webhooks without an endpoint until the new pod is routed to: the window in
# which agentiam writes are refused (docs/threat-model.md, limit 6). The check waits it out like a GitOps
# retry would.
eventually 60 "the agentiam webhooks served by the new operator pod" admitted
# Something for the new pod to record: the agent back to Active.
k -n "$agents" patch agent ic-agent --type=merge -p '{"spec":{"lifecycle":{"desiredState":"Active"}}}' >/dev/null
eventually 60 "Agent ic-agent Active again under the new operator pod" active ic-agent
audit_copy "$work/audit-after.jsonl"
out=$(verify "$work/audit-after.jsonl") || die "audit verify failed after the upgrade: $out"
n0=$(wc -l <"$work/audit-before.jsonl") n1=$(wc -l <"$work/audit-after.jsonl")
[ "$n1" -gt "$n0" ] || die "the new operator pod appended nothing to the audit log ($n0 -> $n1 records)"
head -c "$(stat -c %s "$work/audit-before.jsonl")" "$work/audit-after.jsonl" | cmp -s - "$work/audit-before.jsonl" ||
  die "the audit log after the upgrade does not begin with the log before it"
log "ok: the upgrade rolled $pod -> $pod2 and the audit log kept its $n0 records and grew to $n1 ($out)"

log "helm uninstall"
"$helm" uninstall "$release" -n "$ns" --wait >/dev/null
left=$(k -n "$ns" get pvc -o name)
[ -n "$left" ] || die "helm uninstall removed the audit log's claim (NOTES.txt says it is kept)"
k get mutatingwebhookconfiguration "agentiam-$ns" >/dev/null 2>&1 ||
  die "the webhook configuration is gone after uninstall (NOTES.txt says the operator's own objects stay)"
log "ok: after uninstall the audit claim ($left) and the webhook configuration stay, as NOTES.txt says"
