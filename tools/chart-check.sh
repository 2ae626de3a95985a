#!/usr/bin/env bash
# Checks the Helm chart in charts/agentiam: `helm lint --strict`, values that the schema must reject, and every
# manifest rendered for a set of value combinations validated by the live API server
# (`kubectl apply --dry-run=server`) in a throwaway namespace. With --install it also installs the chart for
# real into a throwaway namespace, checks the operator ServiceAccount's permissions (what it must and must not
# be able to do, and which writes its admission policy lets through), then runs the operator binary on this
# machine with the Deployment's own args and nothing but the ServiceAccount's token (cluster-wide, then with
# watchNamespace after a `helm upgrade`) and drives a sample Agent through its lifecycle: credentials Secret,
# trust bundle, an emergency key rotation, a labelled pod mutated by the admission webhook, archive. A
# permission the chart forgot shows up as a failure here. Finally it uninstalls and deletes the namespaces and
# the webhook configuration. The binary runs here, not as the chart's pod, so that it works without the local
# node and with any kubeconfig (issuer and webhook on loopback addresses); tools/in-cluster-check.sh runs the
# chart's pod from the image we build, on the node.
#
# Usage: tools/chart-check.sh [--install]
# Runs against the local control plane (started when it is down, and stopped again afterwards unless
# KEEP_CLUSTER=1) or against EXISTING_KUBECONFIG=<path>. AGENTIAM_BIN is the operator binary for --install
# (default target/debug/agentiam; `cargo build` first). Exits non-zero on any failure.
set -euo pipefail

LOG_TAG="chart-check"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
cd "$AGENTIAM_ROOT"

install=0
case ${1:-} in
  "") ;;
  --install) install=1 ;;
  *) die "usage: $0 [--install]" ;;
esac

chart=${AGENTIAM_CHART:-charts/agentiam} # AGENTIAM_CHART: check a copy instead
release=agentiam
helm=$HELM_BIN
kubectl=$KUBE_BIN_DIR/kubectl
[ -x "$helm" ] || die "no helm at $helm (run 'make tools')"
[ -x "$kubectl" ] || die "no kubectl at $kubectl (run 'make tools')"

started_here=0
namespaces=() # throwaway namespaces this run created; deleted on exit
if [ -n "${EXISTING_KUBECONFIG:-}" ]; then
  export KUBECONFIG=$EXISTING_KUBECONFIG
else
  export KUBECONFIG=${AGENTIAM_CLUSTER_DIR:-$AGENTIAM_ROOT/.local/cluster}/kubeconfig
  if ! tools/cluster.sh status >/dev/null 2>&1; then
    tools/cluster.sh up
    started_here=1
  fi
fi
k() { "$kubectl" "$@"; }

work=$(mktemp -d)
operator_pid=
release_ns= # namespace of the installed release until it is uninstalled
webhook_configuration= # the MutatingWebhookConfiguration the operator creates; it outlives the release
stop_operator() {
  [ -n "$operator_pid" ] || return 0
  kill -TERM "$operator_pid" 2>/dev/null || true
  wait "$operator_pid" 2>/dev/null || true
  operator_pid=
}
cleanup() {
  local rc=$? ns
  stop_operator
  rm -rf "$work"
  # After a failure midway: the release's cluster-scoped objects do not go with its namespace.
  if [ -n "$release_ns" ]; then
    "$helm" uninstall "$release" --namespace "$release_ns" --ignore-not-found --wait >/dev/null ||
      log "warning: could not uninstall $release from $release_ns"
  fi
  # Fail-closed for labelled pods while it exists, and nobody else deletes it.
  if [ -n "$webhook_configuration" ]; then
    k delete mutatingwebhookconfiguration,validatingwebhookconfiguration "$webhook_configuration" --ignore-not-found >/dev/null ||
      log "warning: could not delete the webhook configurations $webhook_configuration"
  fi
  for ns in "${namespaces[@]}"; do
    # With the operator gone, nothing would ever release the archive finalizer of an Agent left behind.
    k -n "$ns" get agents.agentiam.dev -o name 2>/dev/null |
      xargs -r "$kubectl" -n "$ns" patch --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
    k delete namespace "$ns" --ignore-not-found --wait=true --timeout=120s >/dev/null ||
      log "warning: could not delete namespace $ns"
  done
  if [ "$started_here" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then tools/cluster.sh down || true; fi
  if [ "$rc" = 0 ]; then log "PASS"; else log "FAIL (exit $rc)"; fi
}
trap cleanup EXIT

# Creates a throwaway namespace (deleted on exit) and sets $created to its name. Not a $(...) function: the
# subshell would lose the record of what to delete.
new_namespace() { # new_namespace <purpose>
  created=chart-check-$1-$(date +%s)-$RANDOM
  k create namespace "$created" >/dev/null
  namespaces+=("$created")
}

# Splits a case's flags (which may span lines) into the array $flags; no value contains a space.
split_flags() { read -r -a flags <<<"${1//$'\n'/ }"; }

# ---------------------------------------------------------------------------------------------------------------
# Value combinations: "name|helm flags". @WATCH_NS@ is replaced by a namespace that exists. The default case
# also renders crds/ (--include-crds), so the generated CRDs are validated too.

cases=(
  "default|"
  "watch-namespace|--set watchNamespace=@WATCH_NS@"
  "no-persistence|--set auditLog.persistence.enabled=false"
  "options|--set serviceAccount.create=false --set serviceAccount.name=agentiam-sa --set rbac.restrictCreates=false
    --set auditLog.persistence.existingClaim=audit-claim --set image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    --set logFormat=json --set logLevel=debug --set auditLog.stdout=false --set auditLog.checkpointInterval=1m30s
    --set trustDomain=prod.example.org --set replicaCount=0 --set fullnameOverride=iam
    --set webhook.enabled=false --set issuer.url=https://issuer.example.org/agents --set issuer.keyRotationPeriod=12h
    --set discovery.enabled=false
    --set listeners.idleTimeout=5m --set listeners.httpMaxConnections=64"
  "storage-class|--set auditLog.persistence.storageClass=- --set auditLog.persistence.keepOnUninstall=false
    --set auditLog.persistence.accessMode=ReadWriteOncePod"
  "api-tls-secret|--set apiTls.mode=secret --set apiTls.secretName=agentiam-api-cert"
  "api-tls-plaintext|--set apiTls.mode=plaintext"
  "disruption-and-network|--set podDisruptionBudget.enabled=true --set networkPolicy.http.from[0].namespaceSelector.matchLabels.team=agents
    --set networkPolicy.admin.from[0].ipBlock.cidr=10.0.0.0/8 --set webhook.enabled=false"
  "no-network-policy|--set networkPolicy.enabled=false"
  "gateway-routes|--set-json gateway.routes=[{\"name\":\"tickets\",\"upstream\":\"http://tickets.support.svc:8080/api\",\"audience\":\"tickets\",\"credential\":{\"header\":{\"name\":\"X-Api-Key\",\"secretName\":\"tickets-api\",\"key\":\"api-key\"}}},{\"name\":\"crm\",\"upstream\":\"https://crm.example.com\",\"protocol\":\"mcp\",\"audience\":\"crm\",\"approvalWaitSeconds\":30,\"credential\":{\"basic\":{\"secretName\":\"crm-basic\"}}},{\"name\":\"open\",\"upstream\":\"http://open.svc\",\"audience\":\"open\",\"credential\":{\"header\":{\"name\":\"X-Key\",\"secretName\":\"tickets-api\",\"key\":\"other\"}}}]"
)

# Values the schema must reject: "name|flags".
rejected=(
  "log format other than text or json|--set logFormat=xml"
  "two replicas (single audit writer)|--set replicaCount=2"
  "empty image repository|--set image.repository="
  "bad pull policy|--set image.pullPolicy=Sometimes"
  "uppercase trust domain|--set trustDomain=Example.org"
  "checkpoint interval without unit|--set auditLog.checkpointInterval=30"
  "misspelt key|--set auditlog.stdout=false"
  "watchNamespace not a DNS label|--set watchNamespace=Not_A_Namespace"
  "issuer URL with a trailing slash|--set issuer.url=https://issuer.example.org/"
  "issuer URL that is not http(s)|--set issuer.url=spiffe://issuer.example.org"
  "key rotation period without unit|--set issuer.keyRotationPeriod=24"
  "misspelt webhook key|--set webhook.enable=false"
  "listener timeout without unit|--set listeners.headerReadTimeout=10"
  "no connections allowed|--set listeners.httpMaxConnections=0"
  "unknown API TLS mode|--set apiTls.mode=off"
  "API TLS from a Secret without its name|--set apiTls.mode=secret"
  "approval notification URL that is not http(s)|--set approvals.notifyUrl=ftp://hooks.example.org/x"
  "a NetworkPolicy peer of an unknown kind|--set networkPolicy.http.from[0].serviceSelector.app=x"
  "a NetworkPolicy ipBlock without its CIDR|--set networkPolicy.admin.from[0].ipBlock.except[0]=10.1.0.0/16"
  "a PodDisruptionBudget with a minAvailable of its own|--set podDisruptionBudget.minAvailable=1"
  "a gateway route to an ftp upstream|--set-json gateway.routes=[{\"name\":\"r\",\"upstream\":\"ftp://files\",\"audience\":\"a\"}]"
  "a gateway route with a misspelt field|--set-json gateway.routes=[{\"name\":\"r\",\"upstream\":\"http://u\",\"audience\":\"a\",\"timeout\":5}]"
  "a gateway credential with both kinds|--set-json gateway.routes=[{\"name\":\"r\",\"upstream\":\"http://u\",\"audience\":\"a\",\"credential\":{\"basic\":{\"secretName\":\"s\"},\"header\":{\"name\":\"k\",\"secretName\":\"s\",\"key\":\"k\"}}}]"
)

# Whether the rendered manifests (file $1) hold an object of kind $3 (top-level "kind:" line).
has_kind() { grep -qx "kind: $3" "$1" || die "$2: no $3 rendered"; }
lacks_kind() { if grep -qx "kind: $3" "$1"; then die "$2: a $3 was rendered"; fi; }

# Asserts that the rendered manifests ($1, a file) contain (or, with "!", do not contain) a fixed string.
expect() { # expect <file> <case> [!] <string>
  local file=$1 name=$2 negate=0
  shift 2
  if [ "$1" = "!" ]; then negate=1; shift; fi
  if grep -qF -- "$1" "$file"; then
    [ "$negate" = 0 ] || die "$name: rendered manifests contain '$1'"
  else
    [ "$negate" = 1 ] || die "$name: rendered manifests lack '$1'"
  fi
}

# ---------------------------------------------------------------------------------------------------------------

new_namespace dry-run
ns=$created
new_namespace watched
watch_ns=$created
log "throwaway namespaces: $ns (release) and $watch_ns (watchNamespace)"

for c in "${cases[@]}"; do
  name=${c%%|*}
  split_flags "${c#*|}"
  flags=("${flags[@]//@WATCH_NS@/$watch_ns}")
  crds=()
  [ "$name" != default ] || crds=(--include-crds)

  "$helm" lint --strict --namespace "$ns" "${flags[@]}" "$chart" >"$work/$name.lint" 2>&1 ||
    { cat "$work/$name.lint" >&2; die "$name: helm lint --strict failed"; }

  out=$work/$name.yaml
  "$helm" template "$release" "$chart" --namespace "$ns" "${crds[@]}" "${flags[@]}" >"$out" ||
    die "$name: helm template failed"

  # kubectl reports every object it validated; any invalid one makes it exit non-zero.
  k apply --dry-run=server -f - <"$out" >"$work/$name.apply" 2>&1 ||
    { cat "$work/$name.apply" >&2; die "$name: server-side dry run rejected the manifests"; }
  objects=$(grep -c '(server dry run)' "$work/$name.apply" || true)
  documents=$(grep -c '^kind: ' "$out" || true)
  [ "$objects" = "$documents" ] ||
    { cat "$work/$name.apply" >&2; die "$name: $documents manifests rendered but $objects validated"; }

  case $name in
    default)
      has_kind "$out" "$name" CustomResourceDefinition
      has_kind "$out" "$name" ClusterRoleBinding
      has_kind "$out" "$name" PersistentVolumeClaim
      has_kind "$out" "$name" ValidatingAdmissionPolicy
      has_kind "$out" "$name" ValidatingAdmissionPolicyBinding
      expect "$out" "$name" "helm.sh/resource-policy: keep"
      expect "$out" "$name" "type: Recreate"
      expect "$out" "$name" "image: \"ghcr.io/agentiam/agentiam:$(awk '/^appVersion:/ { gsub(/"/, "", $2); print $2 }' "$chart/Chart.yaml")\""
      expect "$out" "$name" "- --namespace=$ns"
      expect "$out" "$name" ! "--watch-namespace"
      expect "$out" "$name" ! "emptyDir"
      expect "$out" "$name" "- --issuer-url=https://$release.$ns.svc"
      expect "$out" "$name" "- --key-rotation-period=24h"
      expect "$out" "$name" "- --webhook=true"
      expect "$out" "$name" "- --webhook-listen=0.0.0.0:9443"
      # The operator's flag and the Service carry the same rendered name.
      expect "$out" "$name" "- --webhook-service=$release-webhook"
      expect "$out" "$name" "name: $release-webhook"
      expect "$out" "$name" "containerPort: 9443"
      expect "$out" "$name" "resourceNames: [\"agentiam-$ns\"]"
      # TLS on the http port with the operator's certificate for the Service's names.
      expect "$out" "$name" "- --http-tls-san=$release,$release.$ns,$release.$ns.svc,$release.$ns.svc.cluster.local"
      expect "$out" "$name" ! "--http-plaintext"
      expect "$out" "$name" "- \"agentiam-api-tls\""
      expect "$out" "$name" "resourceNames: [\"agentiam-api-ca\"]"
      expect "$out" "$name" "port: 443"
      # Workload admission (discovery on): the label's policy and the role that may set it.
      expect "$out" "$name" "name: $release-$ns-workload-admission-label"
      expect "$out" "$name" "name: $release-$ns-workload-admission-setter"
      expect "$out" "$name" 'verbs: ["set-workload-admission"]'
      # Ingress on the three ports from anyone; no disruption budget unless asked for.
      has_kind "$out" "$name" NetworkPolicy
      expect "$out" "$name" "- ports: [{port: webhook, protocol: TCP}]"
      lacks_kind "$out" "$name" PodDisruptionBudget
      # No gateway routes: no ConfigMap, no Secret access, but the read of a ConfigMap made by hand.
      expect "$out" "$name" ! "agentiam.dev/gateway-routes"
      expect "$out" "$name" 'resourceNames: ["agentiam-gateway"]'
      ;;
    gateway-routes)
      expect "$out" "$name" "name: agentiam-gateway"
      expect "$out" "$name" "  routes.yaml: |"
      expect "$out" "$name" "upstream: http://tickets.support.svc:8080/api"
      expect "$out" "$name" "agentiam.dev/gateway-routes:"
      # Exactly the Secrets the routes name, each once.
      expect "$out" "$name" 'resourceNames: ["tickets-api","crm-basic"]'
      ;;
    disruption-and-network)
      has_kind "$out" "$name" PodDisruptionBudget
      expect "$out" "$name" "maxUnavailable: 0"
      expect "$out" "$name" "team: agents"
      expect "$out" "$name" "cidr: 10.0.0.0/8"
      expect "$out" "$name" ! "port: webhook"
      ;;
    no-network-policy)
      lacks_kind "$out" "$name" NetworkPolicy
      ;;
    api-tls-secret)
      expect "$out" "$name" "- --http-tls-cert-file=/etc/agentiam/http-tls/tls.crt"
      expect "$out" "$name" "secretName: agentiam-api-cert"
      expect "$out" "$name" ! "--http-tls-san"
      expect "$out" "$name" ! "- \"agentiam-api-tls\""
      ;;
    api-tls-plaintext)
      expect "$out" "$name" "- --http-plaintext"
      expect "$out" "$name" ! "--http-tls-san"
      expect "$out" "$name" ! "resourceNames: [\"agentiam-api-ca\"]"
      ;;
    watch-namespace)
      expect "$out" "$name" "- --watch-namespace=$watch_ns"
      expect "$out" "$name" "namespace: $watch_ns"
      expect "$out" "$name" "expression: request.namespace == \"$watch_ns\""
      # The agentiam.dev rules move to the Role; the ClusterRole keeps only the namespace read and the webhook
      # configuration. (Ten in the Role, two in the example delegator ClusterRole, one in the approver's, one
      # in the workload admission setter's.)
      [ "$(grep -c 'apiGroups: \["agentiam.dev"\]' "$out")" = 14 ] || die "$name: expected the agentiam.dev rules once"
      ;;
    no-persistence)
      expect "$out" "$name" "emptyDir: {}"
      lacks_kind "$out" "$name" PersistentVolumeClaim
      ;;
    options)
      lacks_kind "$out" "$name" ServiceAccount
      lacks_kind "$out" "$name" ValidatingAdmissionPolicy
      lacks_kind "$out" "$name" PersistentVolumeClaim
      expect "$out" "$name" "claimName: audit-claim"
      expect "$out" "$name" "serviceAccountName: agentiam-sa"
      expect "$out" "$name" "@sha256:"
      expect "$out" "$name" "- --audit-stdout=false"
      expect "$out" "$name" "- --issuer-url=https://issuer.example.org/agents"
      expect "$out" "$name" "- --key-rotation-period=12h"
      expect "$out" "$name" "- --webhook=false"
      expect "$out" "$name" "- --discovery=false"
      expect "$out" "$name" ! "workload-admission"
      expect "$out" "$name" ! "--webhook-service"
      expect "$out" "$name" ! "mutatingwebhookconfigurations"
      expect "$out" "$name" ! "agentiam-webhook-tls"
      expect "$out" "$name" ! "name: iam-webhook"
      ;;
    storage-class)
      expect "$out" "$name" 'storageClassName: ""'
      expect "$out" "$name" ! "helm.sh/resource-policy"
      ;;
  esac
  log "ok: $name ($objects objects validated by the API server)"
done

for r in "${rejected[@]}"; do
  name=${r%%|*}
  split_flags "${r#*|}"
  if "$helm" template "$release" "$chart" --namespace "$ns" "${flags[@]}" >/dev/null 2>"$work/rejected.err"; then
    die "the schema accepted: $name (${flags[*]})"
  fi
  grep -q "values don't meet the specifications of the schema" "$work/rejected.err" ||
    { cat "$work/rejected.err" >&2; die "$name: rejected, but not by the schema"; }
done
log "ok: the schema rejects ${#rejected[@]} kinds of bad values"

[ "$install" = 1 ] || exit 0

# ---------------------------------------------------------------------------------------------------------------
# --install: a real install, and the permissions it grants.

new_namespace install
ins=$created
new_namespace agents
agents_ns=$created
log "helm install $release into $ins (Agents go into $agents_ns)"
release_ns=$ins
webhook_configuration=agentiam-$ins
"$helm" install "$release" "$chart" --namespace "$ins" --wait=false >"$work/install.out" ||
  die "helm install failed"
# Output captured first: with pipefail, `grep -q` closing the pipe early would fail the writer (SIGPIPE).
status=$("$helm" status "$release" --namespace "$ins") || die "helm status failed"
grep -q '^STATUS: deployed' <<<"$status" || die "release is not deployed"
k -n "$ins" get deployment/$release serviceaccount/$release service/$release service/$release-webhook \
  pvc/$release-audit role/$release rolebinding/$release >/dev/null || die "installed objects missing"
k get clusterrole/$release-"$ins" clusterrolebinding/$release-"$ins" \
  validatingadmissionpolicy/$release-"$ins"-restrict-creates \
  validatingadmissionpolicybinding/$release-"$ins"-restrict-creates \
  validatingadmissionpolicy/$release-"$ins"-workload-admission-label \
  validatingadmissionpolicybinding/$release-"$ins"-workload-admission-label \
  clusterrole/$release-"$ins"-workload-admission-setter >/dev/null || die "cluster objects missing"

sa=system:serviceaccount:$ins:$release
# RBAC and admission policies take effect once the API server's informers see them: poll briefly first.
eventually_for() { # eventually_for <seconds> <what> <command...>
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq 1 $((seconds * 2))); do
    if "$@"; then return 0; fi
    sleep 0.5
  done
  die "timed out after ${seconds}s waiting until $what"
}
eventually() { eventually_for 30 "$@"; } # eventually <what> <command...>
# kube-controller-manager type-checks the policy's CEL against the schemas of the kinds it matches (a
# misspelt field would otherwise only surface as a denial at run time). It learns of the policy from its
# informer, and right after tests/e2e/outage.rs killed the API server that informer may still be in
# client-go's reflector backoff (up to 30 s, doubled by jitter): CI once waited more than 30 s here.
for policy in restrict-creates workload-admission-label; do
  policy_checked() {
    [ -n "$(k get validatingadmissionpolicy/$release-"$ins"-$policy -o jsonpath='{.status.observedGeneration}')" ]
  }
  eventually_for 120 "kube-controller-manager has type-checked the admission policy $policy" policy_checked
  warnings=$(k get validatingadmissionpolicy/$release-"$ins"-$policy \
    -o jsonpath='{range .status.typeChecking.expressionWarnings[*]}{.fieldRef}: {.warning}{"\n"}{end}')
  [ -z "$warnings" ] || { printf '%s\n' "$warnings" >&2; die "the admission policy $policy has type-checking warnings"; }
done

rbac_ready() { [ "$(k auth can-i --as="$sa" get "namespaces/$ins" 2>/dev/null)" = yes ]; }
eventually "the ServiceAccount's RBAC is in effect" rbac_ready
can() { # can <yes|no> <kubectl auth can-i args...>
  local want=$1 got
  shift
  got=$(k auth can-i --as="$sa" "$@" 2>/dev/null || true)
  [ "$got" = "$want" ] || die "ServiceAccount can-i $*: got '$got', want '$want'"
}
# Cluster-wide install: "default" stands for any namespace with Agents.
can yes get "namespaces/$ins"
can no get namespaces/default
# The startup check that the CRDs are installed and Established: those four by name, nothing else.
for crd in agents agentpolicies delegations revocations; do
  can yes get "customresourcedefinitions/$crd.agentiam.dev"
done
can no get customresourcedefinitions/other.example.com
can no list customresourcedefinitions
# Cluster-wide mode watches Namespaces (their labels decide a cluster-wide Revocation's reach): list and
# watch, never get, create or change one.
can yes list namespaces
can yes watch namespaces
can no create namespaces
can no patch "namespaces/$ins"
# The Revocation controller: its finalizer (patch), its status, evictions for stopWorkloads; the monitor's
# automatic suspensions (create); never deletes pods or Revocations itself.
can yes patch revocations.agentiam.dev -n default
can yes patch revocations.agentiam.dev --subresource=status -n default
can no delete revocations.agentiam.dev -n default
can yes create revocations.agentiam.dev -n default
can yes list pods -n default
can yes create pods --subresource=eviction -n default
can no delete pods -n default
can no get pods -n default
can no subscribe revocations.agentiam.dev -n "$ins"
# The emergency rotation a Revocation asks for (an annotation on the key set) and the SSF streams.
can yes patch secrets/agentiam-signing-keys -n "$ins"
can no patch secrets/agentiam-ca -n "$ins"
can yes get configmaps/agentiam-ssf-streams -n "$ins"
can yes patch configmaps/agentiam-ssf-streams -n "$ins"
can yes list agents.agentiam.dev --all-namespaces
can yes watch agents.agentiam.dev --all-namespaces
can yes patch agents.agentiam.dev -n default
can yes patch agents.agentiam.dev --subresource=status -n default
can yes update agents.agentiam.dev --subresource=finalizers -n default
can no update agents.agentiam.dev -n default
# Discovery (on by default) creates shadow Agents and deletes them when their workload goes; it watches
# every kind with a pod template and reads ConfigMaps' key names; it never changes a workload.
can yes delete agents.agentiam.dev -n default
can yes create agents.agentiam.dev -n default
can yes watch pods --all-namespaces
can yes list deployments.apps --all-namespaces
can yes watch replicasets.apps --all-namespaces
can yes watch statefulsets.apps --all-namespaces
can yes watch daemonsets.apps --all-namespaces
can yes watch jobs.batch --all-namespaces
can yes watch cronjobs.batch --all-namespaces
can no patch deployments.apps -n default
can no delete jobs.batch -n default
can yes get configmaps/anything -n default
can yes get configmaps/agentiam-discovery -n "$ins"
can no list configmaps -n default
can yes list delegations.agentiam.dev --all-namespaces
can yes get delegations.agentiam.dev -n default
can no patch delegations.agentiam.dev -n default
can yes patch delegations.agentiam.dev --subresource=status -n default
can yes create delegations.agentiam.dev -n default
can yes delete delegations.agentiam.dev -n default
# The Delegation webhook asks whether a person may "delegate" to an Agent (a SubjectAccessReview); the
# operator itself holds no "delegate" (it never grants on anyone's behalf).
can yes create subjectaccessreviews.authorization.k8s.io
can yes create tokenreviews.authentication.k8s.io
can no introspect agents.agentiam.dev -n default
can no revoke agents.agentiam.dev -n default
can no delegate agents.agentiam.dev -n default
# The example delegator ClusterRole renders with the verb, bound to nobody.
delegator=$(k get clusterrole -l app.kubernetes.io/instance="$release" -o name | grep -- '-delegator$' || true)
[ -n "$delegator" ] || die "the example delegator ClusterRole was not created"
k get "$delegator" -o jsonpath='{.rules[*].verbs}' | grep -q delegate ||
  die "$delegator does not grant the verb delegate"
# ApprovalRequests: the operator creates them (for RequireApproval decisions), writes their status and
# deletes ended ones; it never answers them (no update of spec, no "approve"), nor does anyone it runs as.
can yes create approvalrequests.agentiam.dev -n default
can yes delete approvalrequests.agentiam.dev -n default
can yes patch approvalrequests.agentiam.dev --subresource=status -n default
can no patch approvalrequests.agentiam.dev -n default
can no update approvalrequests.agentiam.dev -n default
can no approve approvalrequests.agentiam.dev -n default
# The example approver ClusterRole renders with the verb, bound to nobody.
approver=$(k get clusterrole -l app.kubernetes.io/instance="$release" -o name | grep -- '-approver$' || true)
[ -n "$approver" ] || die "the example approver ClusterRole was not created"
k get "$approver" -o jsonpath='{.rules[*].verbs}' | grep -q approve ||
  die "$approver does not grant the verb approve"
can yes create events.events.k8s.io -n default
can no create events -n default
# Its own Secrets, by name.
can yes get secrets/agentiam-audit-signing-key -n "$ins"
can yes get secrets/agentiam-signing-keys -n "$ins"
can yes get secrets/agentiam-ca -n "$ins"
can yes get secrets/agentiam-webhook-tls -n "$ins"
can yes update secrets/agentiam-signing-keys -n "$ins"
can yes update secrets/agentiam-webhook-tls -n "$ins"
# The CA and the audit key are never changed after creation. RBAC cannot say so any more: the credentials
# Secrets are replaced whole (update, without names) wherever the ClusterRole applies, this namespace
# included. The admission policy refuses those updates (probed once the operator created them, below).
# THE WIDENING: the <agent>-credentials Secrets have per-agent names, so the operator can read any Secret by
# name wherever it serves Agents (here every namespace, its own included: the ClusterRole covers it). Reads
# never reach admission, so nothing narrows this; with watchNamespace it is confined to that namespace.
can yes get secrets/anything -n default
can yes get secrets/anything -n "$ins"
# It also lists and watches them: the Agent controller watches the Secrets it labels, so a tampered
# credentials Secret is replaced within seconds. RBAC cannot filter by label, so this lets it enumerate every
# Secret where this rule applies (the threat model's operator actor says so); --watch-namespace confines it.
can yes list secrets -n default
can yes watch secrets --all-namespaces
can no deletecollection secrets -n default
# ... and its writes, granted without names, are narrowed by the admission policy (checked below). The
# Secret is replaced whole (update), never patched, so no key anyone else added survives a write.
can yes create secrets -n default
can yes update secrets/anything -n default
can yes delete secrets/anything -n default
can no patch secrets/anything -n default
# ConfigMaps: only the two fixed names. A server-side apply that creates is authorized with the name, so
# create is name-limited too, and a plain POST create is refused.
can yes get configmaps/agentiam-audit-checkpoint -n "$ins"
can yes create configmaps/agentiam-audit-checkpoint -n "$ins"
can yes patch configmaps/agentiam-audit-checkpoint -n "$ins"
can no create configmaps -n "$ins"
can no patch configmaps/other -n "$ins"
can no delete configmaps/agentiam-audit-checkpoint -n "$ins"
can yes create configmaps/agentiam-trust-bundle -n default
can yes patch configmaps/agentiam-trust-bundle -n default
can no delete configmaps/agentiam-trust-bundle -n default
can no create configmaps -n default
can no patch configmaps/other -n default
# The webhook configuration: only its own, never read or deleted; nothing else in admissionregistration.
can yes create "mutatingwebhookconfigurations/$webhook_configuration"
can yes patch "mutatingwebhookconfigurations/$webhook_configuration"
can no create mutatingwebhookconfigurations
can no patch mutatingwebhookconfigurations/other
can no get "mutatingwebhookconfigurations/$webhook_configuration"
can no delete "mutatingwebhookconfigurations/$webhook_configuration"
can yes create "validatingwebhookconfigurations/$webhook_configuration"
can yes patch "validatingwebhookconfigurations/$webhook_configuration"
can no create validatingwebhookconfigurations
can no patch validatingwebhookconfigurations/other
can no delete "validatingwebhookconfigurations/$webhook_configuration"
can no patch "validatingadmissionpolicies/$release-$ins-restrict-creates"
# Nothing that would let it act as someone else or run code.
can no create pods -n default
can no create serviceaccounts --subresource=token -n default
log "ok: the ServiceAccount has exactly the RBAC permissions checked"

# The admission policy, probed with the ServiceAccount's own server-side dry runs (admission runs on those).
# as_sa <kubectl args...>: stdin is a manifest where the args take -f -; stderr goes to $work/sa.err.
as_sa() { k --as="$sa" "$@" -o name >/dev/null 2>"$work/sa.err"; }
allowed() { # allowed <what> <kubectl args...>
  local what=$1
  shift
  as_sa "$@" || { cat "$work/sa.err" >&2; die "the operator cannot $what"; }
}
denied_by_policy() { # denied_by_policy <kubectl args...>
  if as_sa "$@"; then return 1; fi
  grep -q "ValidatingAdmissionPolicy" "$work/sa.err" ||
    { cat "$work/sa.err" >&2; die "$* failed, but not by the admission policy"; }
}
secret() { # secret <name> [label value] [type]: a Secret manifest on stdout
  printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n' "$1"
  [ -z "${2:-}" ] || printf '  labels: {agentiam.dev/agent: %s}\n' "$2"
  [ "${3:-}" != token ] || printf '  annotations: {kubernetes.io/service-account.name: default}\n'
  case ${3:-Opaque} in
    Opaque) printf 'type: Opaque\nstringData: {k: v}\n' ;;
    tls) printf 'type: kubernetes.io/tls\nstringData: {tls.crt: x, tls.key: x}\n' ;;
    token) printf 'type: kubernetes.io/service-account-token\n' ;;
  esac
}
# create_in / replace_in / apply_in <namespace, or - for cluster-scoped> <manifest generator...>
create_in() { local ns=$1; shift; "$@" | as_sa -n "$ns" create --dry-run=server -f -; }
replace_in() { local ns=$1; shift; "$@" | as_sa -n "$ns" replace --dry-run=server -f -; }
apply_in() {
  local ns=(-n "$1")
  [ "$1" != - ] || ns=()
  shift
  "$@" | as_sa "${ns[@]}" apply --server-side --field-manager=chart-check --force-conflicts --dry-run=server -f -
}

eventually "the admission policy denies the operator other Secrets in its namespace" \
  denied_by_policy -n "$ins" create --dry-run=server secret generic not-ours --from-literal=k=v
for s in agentiam-audit-signing-key agentiam-signing-keys agentiam-ca; do
  create_in "$ins" secret "$s" || { cat "$work/sa.err" >&2; die "the operator cannot create Secret $s"; }
done
create_in "$ins" secret agentiam-webhook-tls "" tls || { cat "$work/sa.err" >&2; die "the operator cannot create its TLS Secret"; }
create_in "$ins" secret agentiam-api-tls "" tls || { cat "$work/sa.err" >&2; die "the operator cannot create its HTTP API TLS Secret"; }
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: agentiam-api-ca}\n' |
  allowed "publish its HTTP API CA" -n "$ins" apply --server-side --field-manager=chart-check --dry-run=server -f -
create_in "$ins" secret agentiam-ca "" tls && die "the policy let the CA Secret be created with another type"
grep -q ValidatingAdmissionPolicy "$work/sa.err" || { cat "$work/sa.err" >&2; die "wrong CA type refused, but not by the policy"; }
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: agentiam-audit-checkpoint}\n' |
  allowed "apply its checkpoint ConfigMap" -n "$ins" apply --server-side --field-manager=chart-check --dry-run=server -f -
# Cluster-wide, the release namespace is not an agent namespace.
if create_in "$ins" secret x-credentials x; then die "the policy let a credentials Secret into $ins"; fi
# Agent namespaces: credentials Secrets of the right shape only, and no taking over someone else's.
create_in "$agents_ns" secret probe-credentials probe ||
  { cat "$work/sa.err" >&2; die "the operator cannot create a credentials Secret"; }
create_in "$agents_ns" secret probe-delegations probe ||
  { cat "$work/sa.err" >&2; die "the operator cannot create a delegated-tokens Secret"; }
for bad in "db-credentials" "db-credentials other" "db-password db" "db-credentials db token" "db-delegations other"; do
  read -r -a a <<<"$bad"
  if create_in "$agents_ns" secret "${a[@]}"; then die "the policy let the operator create Secret ($bad)"; fi
  grep -q ValidatingAdmissionPolicy "$work/sa.err" || { cat "$work/sa.err" >&2; die "($bad) refused, but not by the policy"; }
done
secret db-credentials | k -n "$agents_ns" create -f - >/dev/null        # a user's Secret with an agent-like name
secret probe-credentials probe | k -n "$agents_ns" create -f - >/dev/null # as the operator would have made it
denied_by_policy -n "$agents_ns" delete --dry-run=server secret/db-credentials ||
  die "the policy let the operator delete a Secret it does not own"
replace_in "$agents_ns" secret db-credentials db && die "the policy let the operator take over a Secret it does not own"
grep -q ValidatingAdmissionPolicy "$work/sa.err" || { cat "$work/sa.err" >&2; die "takeover refused, but not by the policy"; }
replace_in "$agents_ns" secret probe-credentials probe ||
  { cat "$work/sa.err" >&2; die "the operator cannot replace a credentials Secret"; }
allowed "delete a credentials Secret" -n "$agents_ns" delete --dry-run=server secret/probe-credentials
k -n "$agents_ns" delete secret db-credentials probe-credentials >/dev/null
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: agentiam-trust-bundle}\n' |
  allowed "apply a trust bundle" -n "$agents_ns" apply --server-side --field-manager=chart-check --dry-run=server -f -
# The webhook configuration: its own name, and only with the scope the operator gives it.
webhook_manifest() { # webhook_manifest <resources> <operator> <values...>; $client_config: another clientConfig
  local cc=${client_config:-}
  [ -n "$cc" ] || cc='{url: "https://127.0.0.1:9"}'
  cat <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: $webhook_configuration}
webhooks:
  - name: pods.agentiam.dev
    admissionReviewVersions: [v1]
    sideEffects: None
    clientConfig: $cc
    rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [$1]}]
    objectSelector: {matchExpressions: [{key: agentiam.dev/agent, operator: Exists}]}
    namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: $2, values: [$3]}]}
YAML
}
apply_in - webhook_manifest pods NotIn "kube-system, $ins" ||
  { cat "$work/sa.err" >&2; die "the operator cannot apply its webhook configuration"; }
# In-cluster the operator names its webhook Service (the policy reads the reference's `namespace`, a CEL
# reserved word): its own Service passes, the same name in another namespace does not.
client_config="{service: {name: $release-webhook, namespace: $ins}}" apply_in - webhook_manifest pods NotIn "kube-system, $ins" ||
  { cat "$work/sa.err" >&2; die "the operator cannot apply a webhook configuration naming its own Service"; }
if client_config="{service: {name: $release-webhook, namespace: default}}" apply_in - webhook_manifest pods NotIn "kube-system, $ins"; then
  die "the policy let a webhook calling a Service in another namespace in"
fi
grep -q ValidatingAdmissionPolicy "$work/sa.err" || { cat "$work/sa.err" >&2; die "webhook (foreign Service) refused, but not by the policy"; }
for bad in "pods/* NotIn kube-system,$ins" "pods NotIn $ins" "pods In kube-system"; do
  read -r -a a <<<"$bad"
  if apply_in - webhook_manifest "${a[0]}" "${a[1]}" "${a[2]//,/, }"; then die "the policy let a webhook with scope ($bad) in"; fi
  grep -q ValidatingAdmissionPolicy "$work/sa.err" || { cat "$work/sa.err" >&2; die "webhook ($bad) refused, but not by the policy"; }
done
validating_manifest() { # validating_manifest <group> <resource> <operator> <values...>
  cat <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: $webhook_configuration}
webhooks:
  - name: agents.agentiam.dev
    admissionReviewVersions: [v1]
    sideEffects: NoneOnDryRun
    clientConfig: {url: "https://127.0.0.1:9"}
    rules: [{apiGroups: ["$1"], apiVersions: ["*"], operations: [CREATE, UPDATE, DELETE], resources: [$2]}]
    namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: $3, values: [$4]}]}
YAML
}
apply_in - validating_manifest agentiam.dev agents NotIn "$ins" ||
  { cat "$work/sa.err" >&2; die "the operator cannot apply its validating webhook configuration"; }
for bad in "agentiam.dev secrets NotIn $ins" "agentiam.dev agents NotIn kube-system" " agents NotIn $ins"; do
  read -r -a a <<<"$bad"
  [ ${#a[@]} = 4 ] || a=("" "${a[@]}")
  if apply_in - validating_manifest "${a[0]}" "${a[1]}" "${a[2]}" "${a[3]}"; then die "the policy let a validating webhook with scope ($bad) in"; fi
  grep -q ValidatingAdmissionPolicy "$work/sa.err" || { cat "$work/sa.err" >&2; die "validating webhook ($bad) refused, but not by the policy"; }
done
# Workload admission (discovery on): the operator may also see Pods and the workload kinds, created or
# updated, but only in namespaces that carry the mode label, and never kube-system.
workload_manifest() { # workload_manifest <group> <resources> <operations> <mode selector> <excluded>
  cat <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: $webhook_configuration}
webhooks:
  - name: agents.agentiam.dev
    admissionReviewVersions: [v1]
    sideEffects: NoneOnDryRun
    clientConfig: {url: "https://127.0.0.1:9"}
    rules: [{apiGroups: [agentiam.dev], apiVersions: ["*"], operations: [CREATE, UPDATE, DELETE], resources: [agents]}]
    namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [$ins]}]}
  - name: workloads-enforce.agentiam.dev
    admissionReviewVersions: [v1]
    sideEffects: NoneOnDryRun
    clientConfig: {url: "https://127.0.0.1:9/validate/workloads/enforce"}
    rules: [{apiGroups: ["$1"], apiVersions: [v1], operations: [$3], resources: [$2]}]
    namespaceSelector:
      matchExpressions:
        - {key: kubernetes.io/metadata.name, operator: NotIn, values: [$5]}
$4
YAML
}
enforce_selector='        - {key: agentiam.dev/workload-admission, operator: Exists}'
apply_in - workload_manifest apps "deployments, statefulsets" "CREATE, UPDATE" "$enforce_selector" "kube-system, $ins" ||
  { cat "$work/sa.err" >&2; die "the operator cannot apply its workload admission webhooks"; }
apply_in - workload_manifest "" pods "CREATE" '        - {key: agentiam.dev/workload-admission, operator: In, values: [audit]}' "kube-system, $ins" ||
  { cat "$work/sa.err" >&2; die "the operator cannot apply its audit-mode workload webhook"; }
no_label='        - {key: team, operator: Exists}'
for bad in "apps|deployments|CREATE, UPDATE|$no_label|kube-system, $ins" \
  "apps|deployments|CREATE, UPDATE|        - {key: agentiam.dev/workload-admission, operator: In, values: ['off']}|kube-system, $ins" \
  "apps|deployments|CREATE, DELETE|$enforce_selector|kube-system, $ins" \
  "|secrets|CREATE|$enforce_selector|kube-system, $ins" \
  "apps|deployments|CREATE|$enforce_selector|$ins" \
  "apps|deployments|CREATE|$enforce_selector|kube-system"; do
  IFS='|' read -r g r o sel ex <<<"$bad"
  if apply_in - workload_manifest "$g" "$r" "$o" "$sel" "$ex"; then die "the policy let a workload webhook ($bad) in"; fi
  grep -q ValidatingAdmissionPolicy "$work/sa.err" || { cat "$work/sa.err" >&2; die "workload webhook ($bad) refused, but not by the policy"; }
done
log "ok: the admission policy allows exactly the writes checked"

# The workload admission mode label: a tenant who may edit its namespace cannot set, change or remove it;
# cluster-admin can, with the values this version knows; the setter ClusterRole grants the verb.
new_namespace tenant
tenant_ns=$created
tenant=chart-check-tenant-$RANDOM
k create clusterrole "$tenant" --verb=get,patch,update --resource=namespaces --resource-name="$tenant_ns" >/dev/null
k create clusterrolebinding "$tenant" --clusterrole="$tenant" --user="$tenant" >/dev/null
as_tenant() { k --as="$tenant" "$@" >/dev/null 2>"$work/tenant.err"; }
label_policy_ready() {
  ! as_tenant label namespace "$tenant_ns" agentiam.dev/workload-admission=off &&
    grep -q "only cluster administrators" "$work/tenant.err"
}
eventually "the label policy refuses a tenant" label_policy_ready
grep -q "ValidatingAdmissionPolicy" "$work/tenant.err" || { cat "$work/tenant.err" >&2; die "refused, but not by the label policy"; }
as_tenant label namespace "$tenant_ns" team=payments || { cat "$work/tenant.err" >&2; die "the tenant cannot label its namespace at all"; }
k label namespace "$tenant_ns" agentiam.dev/workload-admission=enforce >/dev/null || die "cluster-admin cannot set the mode"
for change in "agentiam.dev/workload-admission=audit --overwrite" "agentiam.dev/workload-admission-"; do
  read -r -a a <<<"$change"
  if as_tenant label namespace "$tenant_ns" "${a[@]}"; then die "the tenant could change the mode ($change)"; fi
  grep -q "only cluster administrators" "$work/tenant.err" || { cat "$work/tenant.err" >&2; die "($change) refused for another reason"; }
done
if k label namespace "$tenant_ns" agentiam.dev/workload-admission=strict --overwrite >/dev/null 2>"$work/tenant.err"; then
  die "the label policy let an unknown mode in"
fi
grep -q "must be off, audit, warn or enforce" "$work/tenant.err" || { cat "$work/tenant.err" >&2; die "unknown mode refused for another reason"; }
k create clusterrolebinding "$tenant-setter" --clusterrole="$release-$ins-workload-admission-setter" --user="$tenant" >/dev/null
setter_ready() { as_tenant label namespace "$tenant_ns" agentiam.dev/workload-admission=warn --overwrite; }
eventually "the setter ClusterRole lets the tenant set the mode" setter_ready
k delete clusterrolebinding "$tenant" "$tenant-setter" >/dev/null
k delete clusterrole "$tenant" >/dev/null
log "ok: only holders of set-workload-admission change a namespace's workload admission mode"

# The operator, run here with the Deployment's args and only the ServiceAccount's token.
bin=${AGENTIAM_BIN:-$AGENTIAM_ROOT/target/debug/agentiam}
[ -x "$bin" ] || die "no operator binary at $bin (cargo build, or set AGENTIAM_BIN)"
server=$(k config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
ca=$(k config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
sa_kubeconfig=$work/sa.kubeconfig
(
  umask 077
  cat >"$sa_kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: sa, user: {token: "$(k -n "$ins" create token "$release" --duration=1h)"}}]
contexts: [{name: sa, context: {cluster: c, user: sa}}]
current-context: sa
YAML
)
# The sample Agent's pods run as this ServiceAccount (spec.workload), and the ServiceAccount admission plugin
# refuses pods whose ServiceAccount does not exist.
k -n "$agents_ns" create serviceaccount support-triage >/dev/null

# run_operator <label>: starts the operator with the args of the installed Deployment, except for what points
# into the pod or the cluster network: the audit log file, the listen addresses, the issuer URL (the http
# server here) and the webhook, which the API server reaches by URL instead of through the Service. The
# checkpoint interval is short. Sets $http_port and $webhook_url.
run_operator() {
  local label=$1 webhook_port admin_port args=()
  http_port=$((20000 + RANDOM % 20000))
  admin_port=$((http_port + 2))
  webhook_port=$((20000 + RANDOM % 20000))
  [ "$webhook_port" != "$http_port" ] && [ "$webhook_port" != "$admin_port" ] || webhook_port=$((http_port + 1))
  webhook_url=https://127.0.0.1:$webhook_port
  mapfile -t args < <(k -n "$ins" get deployment/$release \
    -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}')
  [ "${args[0]:-}" = run ] || die "unexpected Deployment args: ${args[*]}"
  [[ " ${args[*]} " == *" --webhook-listen=0.0.0.0:9443 "* ]] || die "the Deployment has no --webhook-listen"
  args=("${args[@]/#--audit-log=*/--audit-log=$work/audit/audit.jsonl}")
  args=("${args[@]/#--http-addr=*/--http-addr=127.0.0.1:$http_port}")
  args=("${args[@]/#--admin-addr=*/--admin-addr=127.0.0.1:$admin_port}")
  args=("${args[@]/#--checkpoint-interval=*/--checkpoint-interval=1s}")
  args=("${args[@]/#--issuer-url=*/--issuer-url=https://127.0.0.1:$http_port}")
  args=("${args[@]/#--webhook-listen=*/--webhook-listen=127.0.0.1:$webhook_port}")
  args+=("--webhook-url=$webhook_url")
  log "$label: agentiam ${args[*]}"
  KUBECONFIG=$sa_kubeconfig POD_NAME=chart-check "$bin" "${args[@]}" \
    >"$work/$label.audit" 2>"$work/$label.log" &
  operator_pid=$!
  operator_ready() {
    kill -0 "$operator_pid" 2>/dev/null || { tail -n 20 "$work/$label.log" >&2; die "$label: the operator exited"; }
    curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1
  }
  eventually "$label: the operator is ready" operator_ready
  # The HTTP API serves TLS with the operator's certificate; clients trust the CA it published.
  k -n "$ins" get configmap agentiam-api-ca -o jsonpath='{.data.ca\.crt}' >"$work/api-ca.crt" ||
    die "$label: no CA published for the HTTP API"
  curl -fsS --cacert "$work/api-ca.crt" "https://127.0.0.1:$http_port/readyz" >/dev/null ||
    die "$label: the HTTP API does not serve TLS with the published CA"
}

# exercise <label>: an Agent goes Active (status, finalizer, Events), gets its credentials Secret and its
# namespace the trust bundle; an emergency key rotation replaces the key set and re-issues both; a labelled pod
# is admitted with the credentials mounted; the Agent is archived on delete and its Secret withdrawn. Then the
# operator stops and must have logged no permission error.
exercise() {
  local label=$1 agent=support-triage creds=support-triage-credentials kid sequence discovery
  local pod=support-triage-$label
  fail() { tail -n 20 "$work/$label.log" >&2; die "$label: $*"; }
  k -n "$agents_ns" delete events.events.k8s.io --all >/dev/null # only this run's Events count
  # Gone before each run, so each run must create it again.
  k -n "$agents_ns" delete configmap agentiam-trust-bundle --ignore-not-found >/dev/null
  k -n "$agents_ns" apply -f config/samples/agentiam.dev_v1alpha1_agent.yaml >/dev/null
  k -n "$agents_ns" wait --for=jsonpath='{.status.phase}'=Active --timeout=60s agent/$agent >/dev/null ||
    fail "the sample Agent did not become Active"
  # The Event follows the status write that `kubectl wait` saw.
  has_event() {
    grep -qx "$agent agentiam-operator" <<<"$(k -n "$agents_ns" get events.events.k8s.io \
      -o jsonpath='{range .items[*]}{.regarding.name} {.reportingController}{"\n"}{end}')"
  }
  eventually "$label: an Event for the Agent" has_event

  has_credentials() {
    [ "$(k -n "$agents_ns" get "secret/$creds" -o jsonpath='{.metadata.labels.agentiam\.dev/agent}' 2>/dev/null)" = "$agent" ]
  }
  eventually "$label: the Agent has its credentials Secret" has_credentials
  [[ "$(k -n "$agents_ns" get "secret/$creds" -o jsonpath='{.data}')" == *'"svid.pem"'* ]] || fail "no X.509-SVID in $creds"
  k -n "$agents_ns" get configmap/agentiam-trust-bundle >/dev/null 2>&1 || fail "no trust bundle in $agents_ns"
  discovery=$(curl -fsS --cacert "$work/api-ca.crt" "https://127.0.0.1:$http_port/.well-known/openid-configuration") ||
    fail "no OIDC discovery document"
  grep -qF "\"issuer\":\"https://127.0.0.1:$http_port\"" <<<"$discovery" || fail "the discovery document names another issuer"
  [[ "$(k -n "$agents_ns" get configmap/agentiam-trust-bundle -o jsonpath='{.data}')" == *'"api-ca.crt"'* ]] ||
    fail "the trust bundle has no api-ca.crt"

  # Emergency rotation: the key set Secret is replaced (update), then credentials and bundle are re-applied.
  kid=$(k -n "$agents_ns" get "secret/$creds" -o jsonpath='{.metadata.annotations.agentiam\.dev/key-id}')
  sequence=$(k -n "$agents_ns" get configmap/agentiam-trust-bundle \
    -o jsonpath='{.metadata.annotations.agentiam\.dev/bundle-sequence}')
  k -n "$ins" annotate secret/agentiam-signing-keys agentiam.dev/emergency-rotation=chart-check >/dev/null
  rotated() {
    [ -z "$(k -n "$ins" get secret/agentiam-signing-keys \
      -o jsonpath='{.metadata.annotations.agentiam\.dev/emergency-rotation}')" ] &&
      [ "$(k -n "$agents_ns" get "secret/$creds" -o jsonpath='{.metadata.annotations.agentiam\.dev/key-id}')" != "$kid" ] &&
      [ "$(k -n "$agents_ns" get configmap/agentiam-trust-bundle \
        -o jsonpath='{.metadata.annotations.agentiam\.dev/bundle-sequence}')" != "$sequence" ]
  }
  eventually "$label: the keys rotated and the credentials and bundle followed" rotated

  # The webhook: the operator applied its configuration (by URL, for this run), and mutates labelled pods.
  webhook_applied() {
    [ "$(k get mutatingwebhookconfiguration "$webhook_configuration" \
      -o jsonpath='{.webhooks[0].clientConfig.url}' 2>/dev/null)" = "$webhook_url/mutate-pods" ] &&
    [ "$(k get validatingwebhookconfiguration "$webhook_configuration" \
      -o jsonpath='{.webhooks[0].clientConfig.url}' 2>/dev/null)" = "$webhook_url/validate/agents" ] &&
    # Discovery is on by default: the policy let the operator apply its workload admission webhooks too.
    [ "$(k get validatingwebhookconfiguration "$webhook_configuration" \
      -o jsonpath='{.webhooks[7].clientConfig.url}' 2>/dev/null)" = "$webhook_url/validate/workloads/enforce" ]
  }
  eventually "$label: the webhook configuration points at this run" webhook_applied
  create_pod() {
    k -n "$agents_ns" create -f - >/dev/null 2>"$work/pod.err" <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $pod
  labels: {agentiam.dev/agent: $agent, app.kubernetes.io/name: $agent}
spec:
  serviceAccountName: $agent
  containers: [{name: main, image: registry.invalid/agent:1}]
YAML
  }
  # Until the operator's cache has seen the Agent Active, the webhook refuses the pod: retry briefly.
  for _ in $(seq 1 60); do
    if create_pod; then break; fi
    sleep 0.5
  done
  k -n "$agents_ns" get "pod/$pod" >/dev/null 2>&1 || { cat "$work/pod.err" >&2; fail "the labelled pod was refused"; }
  k -n "$agents_ns" get "pod/$pod" -o jsonpath='{range .spec.volumes[?(@.name=="agentiam-credentials")].projected.sources[*]}{.secret.name}{.configMap.name}{"\n"}{end}' \
    >"$work/pod.sources"
  if ! grep -qx "$creds" "$work/pod.sources" || ! grep -qx agentiam-trust-bundle "$work/pod.sources"; then
    fail "the pod was admitted without the credentials volume (no mutation)"
  fi
  k -n "$agents_ns" delete "pod/$pod" --wait=false >/dev/null

  k -n "$agents_ns" delete agent/$agent --timeout=60s >/dev/null || fail "the Agent was not archived and released"
  if k -n "$agents_ns" get "secret/$creds" >/dev/null 2>&1; then fail "the credentials outlived the Agent"; fi
  k -n "$ins" get secret/agentiam-audit-signing-key configmap/agentiam-audit-checkpoint secret/agentiam-signing-keys \
    secret/agentiam-ca secret/agentiam-webhook-tls >/dev/null || die "$label: an operator Secret or the checkpoint is missing"
  stop_operator
  # A namespace that is being deleted (one the e2e tests left terminating, which a cluster-wide operator
  # also serves) refuses new objects with a 403 that is not RBAC: "unable to create new content in namespace
  # ... because it is being terminated". Those lines are left out; any other 403 fails.
  if grep -Ei 'forbidden|\b403\b' "$work/$label.log" | grep -v 'because it is being terminated' | grep -q .; then
    grep -Ei 'forbidden|\b403\b' "$work/$label.log" | grep -v 'because it is being terminated' >&2
    die "$label: the operator hit a permission error"
  fi
  grep -q '"action":"agent.archive"' "$work/$label.audit" || die "$label: no archive record on stdout"
  log "ok: $label: operator ran as the ServiceAccount (Agent Active, credentials, trust bundle, key rotation, pod mutated, archived; no permission errors)"
}

run_operator cluster-wide
exercise cluster-wide
for s in agentiam-ca agentiam-audit-signing-key; do
  k -n "$ins" get "secret/$s" -o json | denied_by_policy -n "$ins" replace --dry-run=server -f - ||
    die "the admission policy let the operator replace Secret $s"
done
"$helm" upgrade "$release" "$chart" --namespace "$ins" --reuse-values --set "watchNamespace=$agents_ns" \
  >/dev/null || die "helm upgrade to watchNamespace failed"
rbac_watch_ready() {
  [ "$(k auth can-i --as="$sa" list agents.agentiam.dev -n "$agents_ns" 2>/dev/null)" = yes ] &&
    [ "$(k auth can-i --as="$sa" list agents.agentiam.dev --all-namespaces 2>/dev/null)" = no ]
}
eventually "watchNamespace: Agents are readable in $agents_ns only" rbac_watch_ready
# The policy changed too (its webhook scope is now "In $agents_ns"); until the API server sees that, it would
# refuse the operator's webhook configuration.
policy_watch_ready() { apply_in - webhook_manifest pods In "$agents_ns"; }
eventually "watchNamespace: the admission policy is updated" policy_watch_ready
# The widening is confined to the watched namespace now.
can yes get secrets/anything -n "$agents_ns"
can no get secrets/anything -n default
can no get secrets/anything -n "$ins"
can no create secrets -n default
can no create configmaps/agentiam-trust-bundle -n default
# Restart on the same audit log: also checks the startup path that verifies it against the published checkpoint.
run_operator watch-namespace
exercise watch-namespace

"$helm" uninstall "$release" --namespace "$ins" --wait >/dev/null || die "helm uninstall failed"
release_ns=
k -n "$ins" get pvc/$release-audit >/dev/null || die "the audit claim did not survive helm uninstall"
if k get clusterrole/$release-"$ins" >/dev/null 2>&1; then die "helm uninstall left the ClusterRole"; fi
# As documented in NOTES: the operator's webhook configuration is not part of the release.
k get mutatingwebhookconfiguration "$webhook_configuration" >/dev/null ||
  die "the webhook configuration is gone; update NOTES.txt"
log "ok: install and uninstall (the audit claim and webhook configuration are kept, as documented; both go on exit)"
