#!/usr/bin/env bash
# Checks the Helm chart in charts/agentiam: `helm lint --strict`, values that the schema must reject, and every
# manifest rendered for a set of value combinations validated by the live API server
# (`kubectl apply --dry-run=server`) in a throwaway namespace. With --install it also installs the chart for
# real into a throwaway namespace, checks the operator ServiceAccount's permissions (what it must and must not
# be able to do), then runs the operator binary on this machine with the Deployment's own args and nothing but
# the ServiceAccount's token (cluster-wide, then with watchNamespace after a `helm upgrade`) and drives a sample
# Agent through its lifecycle: a permission the chart forgot shows up as a failure here. Finally it uninstalls
# and deletes the namespaces. Pods stay Pending on the local control plane (no scheduler or kubelet); that is
# expected, and is why the binary runs here instead.
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
    --set trustDomain=prod.example.org --set replicaCount=0 --set fullnameOverride=iam"
  "storage-class|--set auditLog.persistence.storageClass=- --set auditLog.persistence.keepOnUninstall=false
    --set auditLog.persistence.accessMode=ReadWriteOncePod"
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
      ;;
    watch-namespace)
      expect "$out" "$name" "- --watch-namespace=$watch_ns"
      expect "$out" "$name" "namespace: $watch_ns"
      # The agentiam.dev rules move to the Role; the ClusterRole keeps only the namespace read.
      [ "$(grep -c 'apiGroups: \["agentiam.dev"\]' "$out")" = 4 ] || die "$name: expected the agentiam.dev rules once"
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
log "helm install $release into $ins"
release_ns=$ins
"$helm" install "$release" "$chart" --namespace "$ins" --wait=false >"$work/install.out" ||
  die "helm install failed"
"$helm" status "$release" --namespace "$ins" | grep -q '^STATUS: deployed' || die "release is not deployed"
k -n "$ins" get deployment/$release serviceaccount/$release service/$release pvc/$release-audit \
  role/$release rolebinding/$release >/dev/null || die "installed objects missing"
k get clusterrole/$release-"$ins" clusterrolebinding/$release-"$ins" \
  validatingadmissionpolicy/$release-"$ins"-restrict-creates \
  validatingadmissionpolicybinding/$release-"$ins"-restrict-creates >/dev/null || die "cluster objects missing"

sa=system:serviceaccount:$ins:$release
# RBAC and admission policies take effect once the API server's informers see them: poll briefly first.
eventually() { # eventually <what> <command...>
  local what=$1
  shift
  for _ in $(seq 1 60); do
    if "$@"; then return 0; fi
    sleep 0.5
  done
  die "timed out waiting until $what"
}
rbac_ready() { [ "$(k auth can-i --as="$sa" get "namespaces/$ins" 2>/dev/null)" = yes ]; }
eventually "the ServiceAccount's RBAC is in effect" rbac_ready
can() { # can <yes|no> <kubectl auth can-i args...>
  local want=$1 got
  shift
  got=$(k auth can-i --as="$sa" "$@" 2>/dev/null || true)
  [ "$got" = "$want" ] || die "ServiceAccount can-i $*: got '$got', want '$want'"
}
can yes get "namespaces/$ins"
can no get namespaces/default
can no list namespaces
can yes list agents.agentiam.dev --all-namespaces
can yes watch agents.agentiam.dev --all-namespaces
can yes patch agents.agentiam.dev -n default
can yes patch agents.agentiam.dev --subresource=status -n default
can no update agents.agentiam.dev -n default
can no delete agents.agentiam.dev -n default
can no create agents.agentiam.dev -n default
can yes list delegations.agentiam.dev --all-namespaces
can no patch delegations.agentiam.dev -n default
can yes create events.events.k8s.io -n default
can no create events -n default
can yes get secrets/agentiam-audit-signing-key -n "$ins"
can no get secrets/other -n "$ins"
can no list secrets -n "$ins"
can no update secrets/agentiam-audit-signing-key -n "$ins"
can no create secrets -n default
can yes patch configmaps/agentiam-audit-checkpoint -n "$ins"
can no patch configmaps/other -n "$ins"
can no delete configmaps/agentiam-audit-checkpoint -n "$ins"
# create is granted without names; the ValidatingAdmissionPolicy limits it (admission runs on dry runs too).
as_sa_create() { k --as="$sa" -n "$ins" create --dry-run=server "$@" -o name >/dev/null 2>"$work/create.err"; }
as_sa_create secret generic agentiam-audit-signing-key --from-literal=k=v ||
  { cat "$work/create.err" >&2; die "the operator cannot create its signing-key Secret"; }
as_sa_create configmap agentiam-audit-checkpoint --from-literal=k=v ||
  { cat "$work/create.err" >&2; die "the operator cannot create its checkpoint ConfigMap"; }
denied_by_policy() { # denied_by_policy <kubectl create args...>
  if as_sa_create "$@"; then return 1; fi
  grep -q "ValidatingAdmissionPolicy" "$work/create.err" ||
    { cat "$work/create.err" >&2; die "create $* failed, but not by the admission policy"; }
}
eventually "the admission policy denies the operator other Secrets" \
  denied_by_policy secret generic not-ours --from-literal=k=v
eventually "the admission policy denies the operator other ConfigMaps" \
  denied_by_policy configmap not-ours --from-literal=k=v
log "ok: the ServiceAccount has exactly the permissions checked"

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

new_namespace agents
agents_ns=$created

# run_operator <label>: starts the operator with the args of the installed Deployment, except for the audit log
# file and listen address (they point into the pod) and a short checkpoint interval.
run_operator() {
  local label=$1 port args=()
  port=$((20000 + RANDOM % 20000))
  mapfile -t args < <(k -n "$ins" get deployment/$release \
    -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}')
  [ "${args[0]:-}" = run ] || die "unexpected Deployment args: ${args[*]}"
  args=("${args[@]/#--audit-log=*/--audit-log=$work/audit/audit.jsonl}")
  args=("${args[@]/#--http-addr=*/--http-addr=127.0.0.1:$port}")
  args=("${args[@]/#--checkpoint-interval=*/--checkpoint-interval=1s}")
  log "$label: agentiam ${args[*]}"
  KUBECONFIG=$sa_kubeconfig POD_NAME=chart-check "$bin" "${args[@]}" \
    >"$work/$label.audit" 2>"$work/$label.log" &
  operator_pid=$!
  operator_ready() {
    kill -0 "$operator_pid" 2>/dev/null || { tail -n 20 "$work/$label.log" >&2; die "$label: the operator exited"; }
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1
  }
  eventually "$label: the operator is ready" operator_ready
}

# exercise <label>: an Agent goes Active (status, finalizer, Events) and is archived on delete, then the
# operator stops and must have logged no permission error.
exercise() {
  local label=$1 agent=support-triage
  k -n "$agents_ns" delete events.events.k8s.io --all >/dev/null # only this run's Events count
  k -n "$agents_ns" apply -f config/samples/agentiam.dev_v1alpha1_agent.yaml >/dev/null
  k -n "$agents_ns" wait --for=jsonpath='{.status.phase}'=Active --timeout=60s agent/$agent >/dev/null ||
    { tail -n 20 "$work/$label.log" >&2; die "$label: the sample Agent did not become Active"; }
  k -n "$agents_ns" get events.events.k8s.io \
    -o jsonpath='{range .items[*]}{.regarding.name} {.reportingController}{"\n"}{end}' |
    grep -qx "$agent agentiam-operator" || die "$label: no Event for the Agent"
  k -n "$agents_ns" delete agent/$agent --timeout=60s >/dev/null ||
    { tail -n 20 "$work/$label.log" >&2; die "$label: the Agent was not archived and released"; }
  k -n "$ins" get secret/agentiam-audit-signing-key configmap/agentiam-audit-checkpoint >/dev/null ||
    die "$label: signing key or checkpoint missing"
  stop_operator
  if grep -Eiq 'forbidden|\b403\b' "$work/$label.log"; then
    grep -Ei 'forbidden|\b403\b' "$work/$label.log" >&2
    die "$label: the operator hit a permission error"
  fi
  grep -q '"action":"agent.archive"' "$work/$label.audit" || die "$label: no archive record on stdout"
  log "ok: $label: operator ran as the ServiceAccount (Agent Active, Events, archived; no permission errors)"
}

run_operator cluster-wide
exercise cluster-wide
"$helm" upgrade "$release" "$chart" --namespace "$ins" --reuse-values --set "watchNamespace=$agents_ns" \
  >/dev/null || die "helm upgrade to watchNamespace failed"
rbac_watch_ready() {
  [ "$(k auth can-i --as="$sa" list agents.agentiam.dev -n "$agents_ns" 2>/dev/null)" = yes ] &&
    [ "$(k auth can-i --as="$sa" list agents.agentiam.dev --all-namespaces 2>/dev/null)" = no ]
}
eventually "watchNamespace: Agents are readable in $agents_ns only" rbac_watch_ready
# Restart on the same audit log: also checks the startup path that verifies it against the published checkpoint.
run_operator watch-namespace
exercise watch-namespace

"$helm" uninstall "$release" --namespace "$ins" --wait >/dev/null || die "helm uninstall failed"
release_ns=
k -n "$ins" get pvc/$release-audit >/dev/null || die "the audit claim did not survive helm uninstall"
if k get clusterrole/$release-"$ins" >/dev/null 2>&1; then die "helm uninstall left the ClusterRole"; fi
log "ok: install and uninstall (the audit claim is kept, as intended; the namespace goes on exit)"
