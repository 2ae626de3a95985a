#!/usr/bin/env bash
# A local Kubernetes cluster without Docker: etcd, kube-apiserver and kube-controller-manager from the binaries
# tools/build-tools.sh caches, bound to 127.0.0.1, and, where the machine allows (root), one node that runs
# pods (tools/node.sh: containerd, kubelet, kube-scheduler, kube-proxy, CoreDNS). Without the node, Pods stay
# Pending but everything an operator talks to (CRDs, RBAC, admission webhooks, TokenRequest, garbage
# collection, Deployments -> ReplicaSets -> Pods) is real. See docs/local-control-plane.md.
# AGENTIAM_NODE=auto|1|0 (default auto; E2E_REQUIRED=1 makes auto mean 1) decides whether the node runs.
#
# Usage: tools/cluster.sh up | down [--purge] | status | env
#        tools/cluster.sh stop-apiserver [--kill] | start-apiserver | restart-apiserver [--kill] [--down-for <s>]
# State: ${AGENTIAM_CLUSTER_DIR:-<repo>/.local/cluster}
set -euo pipefail

LOG_TAG=cluster
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

state=${AGENTIAM_CLUSTER_DIR:-$AGENTIAM_ROOT/.local/cluster}
pki=$state/pki
kubeconfig=$state/kubeconfig
# Marks a directory as ours, so `down --purge` never deletes a directory someone pointed us at by mistake.
marker=$state/.agentiam-cluster
control_plane=(etcd kube-apiserver kube-controller-manager)
components=("${control_plane[@]}")
started=() # components this run started; the ones a failed `up` stops again
# shellcheck source-path=SCRIPTDIR source=node.sh
source "$AGENTIAM_ROOT/tools/node.sh"
# Present while this cluster runs with its node: `down`, `status` and the next `up` read it.
node_flag=$state/node.on
node_enabled() { [ -f "$node_flag" ]; }
node_left=0 # set when tearing the node down left something behind; fails `down`
node_enabled && components+=("${node_components[@]}")

usage() {
  echo "usage: $0 up | down [--purge] | status | env" >&2
  echo "       $0 stop-apiserver [--kill] | start-apiserver | restart-apiserver [--kill] [--down-for <seconds>]" >&2
  exit 2
}

# ---------------------------------------------------------------------------------------------------------------
# Processes. A component is "ours" only if its recorded PID still runs the expected binary with arguments that
# point into this state dir; PIDs get reused, and we must never signal someone else's process.

bin_of() {
  case $1 in
    etcd) echo "$ETCD_BIN" ;;
    containerd) echo "$CONTAINERD_DIR/containerd" ;;
    coredns) echo "$COREDNS_BIN" ;;
    local-path-provisioner) echo "$LOCAL_PATH_BIN" ;;
    *) echo "$KUBE_BIN_DIR/$1" ;;
  esac
}

# Prints the recorded PID of component $1 if that process is alive and still ours.
our_pid() {
  local f=$state/pids/$1.pid pid cmd
  [ -f "$f" ] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # A zombie or a vanished process has an empty cmdline, which fails the match below.
  cmd=$({ tr '\0' '\n' <"/proc/$pid/cmdline"; } 2>/dev/null) || return 1
  [ "$(basename "$(head -n1 <<<"$cmd")")" = "$1" ] || return 1
  grep -qF -- "$state/" <<<"$cmd" || return 1
  echo "$pid"
}

# True while PID $1 exists and is not a zombie. Used right after a start, before exec has replaced the forked
# shell, when our_pid would not yet recognise the binary.
pid_alive() {
  local st
  st=$({ awk '{ print $3 }' "/proc/$1/stat"; } 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

start_component() { # start_component <name> <args>...
  local name=$1; shift
  local logf=$state/logs/$name.log
  printf '\n===== %s starting %s =====\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name" >>"$logf"
  # setsid puts the process in its own session, so neither the end of the calling shell (`make cluster-up`
  # returns) nor a Ctrl-C in its terminal reaches it; nohup also ignores SIGHUP. stdin/stdout/stderr and the
  # lock descriptor are redirected so that no pipe or lock of the caller is held open by the daemon. In a
  # non-interactive shell the background job is not a process-group leader, so setsid does not fork and $! is
  # the daemon's own PID once nohup and setsid have exec'ed.
  setsid nohup "$(bin_of "$name")" "$@" </dev/null >>"$logf" 2>&1 9>&- &
  echo $! >"$state/pids/$name.pid"
  started+=("$name")
}

# Prints the recorded PID of component $1 if that process is an unreaped child of this shell: a component a
# failed `up` started a moment ago may not have exec'ed its binary yet, and our own child cannot be anyone else's.
child_pid() {
  local pid ppid
  pid=$({ cat "$state/pids/$1.pid"; } 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  ppid=$({ awk '{ print $4 }' "/proc/$pid/stat"; } 2>/dev/null) || return 1
  [ "$ppid" = $$ ] && pid_alive "$pid" && echo "$pid"
}

stop_component() { # stop_component <name> [KILL]: SIGTERM (then SIGKILL after 20 s), or SIGKILL at once
  local name=$1 signal=${2:-TERM} pid deadline
  local f=$state/pids/$name.pid
  if pid=$(our_pid "$name") || pid=$(child_pid "$name"); then
    log "stopping $name (pid $pid, SIG$signal)"
    kill "-$signal" "$pid" 2>/dev/null || true
    # kube-apiserver drains in-flight requests on SIGTERM; a few seconds is normal, 20 is generous.
    deadline=$((SECONDS + 20))
    while pid_alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    # Re-check ownership before SIGKILL: in 20 s the PID could in theory have been reused.
    if pid_alive "$pid" && { our_pid "$name" >/dev/null || child_pid "$name" >/dev/null; }; then
      log "$name did not exit after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while pid_alive "$pid"; do sleep 0.1; done
    fi
  elif [ -f "$f" ]; then
    log "$name is not running (or the recorded pid is not ours); removing its pid file"
  fi
  rm -f "$f"
}

stop_all() {
  local i
  # The node's parts in their own order (kubelet before containerd, pods before mounts); its pid files tell
  # whether anything of it may run, whatever the flag says.
  if node_enabled || node_running; then node_teardown || node_left=1; fi
  for ((i = ${#control_plane[@]} - 1; i >= 0; i--)); do stop_component "${control_plane[i]}"; done
}

stop_started() {
  local i
  [[ " ${started[*]} " != *" containerd "* ]] || node_teardown || true
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do stop_component "${started[i]}"; done
}

# A failed `up` shows why, and leaves nothing it started running.
fail() { # fail <component> <message>
  local name=$1 logf=$state/logs/$1.log first
  log "error: $2"
  if [ -f "$logf" ]; then
    # Only this start's lines: the log is appended to across runs, and an earlier shutdown is not the cause.
    first=$(grep -n '^===== .* starting ' "$logf" | tail -n 1 | cut -d: -f1)
    echo "----- $logf (last 40 lines of this start) -----" >&2
    tail -n "+${first:-1}" "$logf" | tail -n 40 >&2
    echo "-----" >&2
  fi
  stop_started
  exit 1
}

wait_until() { # wait_until <component> <timeout-s> <what> <command>...
  local name=$1 timeout=$2 what=$3; shift 3
  local deadline=$((SECONDS + timeout)) pid
  pid=$(<"$state/pids/$name.pid")
  until "$@"; do
    pid_alive "$pid" || fail "$name" "$name exited while waiting for $what"
    [ $SECONDS -lt $deadline ] || fail "$name" "timed out after ${timeout}s waiting for $what"
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------------------------
# Health. Each check is one short request; `up` uses them to decide whether there is anything to do.

etcd_healthy() {
  curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}

api_get() { # api_get <path>: GET as the admin user, verifying the serving certificate
  curl -fsS --max-time 3 --cacert "$pki/serving-ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT$1" 2>/dev/null
}

apiserver_healthy() { [ "$(api_get /readyz)" = ok ]; }
api_exists() { api_get "$1" >/dev/null; }

# The controller manager serves /healthz with a self-signed certificate it generates itself; -k is fine for a
# liveness probe on loopback, nothing secret is exchanged.
controller_manager_healthy() {
  [ "$(curl -fsSk --max-time 2 "https://127.0.0.1:$CONTROLLER_MANAGER_PORT/healthz" 2>/dev/null)" = ok ]
}

# /healthz turns ok before the controllers are running; each controller adds its own check when it starts. These
# are the ones tests lean on (Deployment -> ReplicaSet -> Pod, cascading deletes, namespace cleanup, default SAs).
controllers_started() {
  local out c
  out=$(curl -fsSk --max-time 2 "https://127.0.0.1:$CONTROLLER_MANAGER_PORT/healthz?verbose" 2>/dev/null) || return 1
  for c in deployment replicaset garbage-collector namespace serviceaccount root-ca-certificate-publisher; do
    grep -q "^\[+\]$c-controller ok" <<<"$out" || return 1
  done
}

component_healthy() {
  our_pid "$1" >/dev/null || return 1
  case $1 in
    etcd) etcd_healthy ;;
    kube-apiserver) apiserver_healthy ;;
    kube-controller-manager) controller_manager_healthy ;;
    containerd) containerd_healthy ;;
    kube-scheduler) scheduler_healthy ;;
    kubelet) kubelet_healthy ;;
    kube-proxy) kube_proxy_healthy ;;
    coredns) coredns_ready ;;
    local-path-provisioner) local_path_healthy ;;
  esac
}

all_healthy() {
  [ -f "$state/ports.env" ] || return 1
  local c
  for c in "${components[@]}"; do component_healthy "$c" || return 1; done
}

port_names=(ETCD_CLIENT_PORT ETCD_PEER_PORT APISERVER_PORT CONTROLLER_MANAGER_PORT SCHEDULER_PORT KUBELET_PORT
  KUBELET_HEALTHZ_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT COREDNS_HEALTH_PORT COREDNS_READY_PORT)

load_ports() {
  local n
  for n in "${port_names[@]}"; do printf -v "$n" '%s' ''; done
  # shellcheck source=/dev/null
  [ ! -f "$state/ports.env" ] || source "$state/ports.env"
}

# ---------------------------------------------------------------------------------------------------------------
# Ports. Reusing the previous ports keeps the kubeconfig, the service-account issuer and any tokens minted
# against it valid across down/up. New ports come from below the kernel's ephemeral range (32768+ by default),
# so an outgoing connection cannot take one of them between two runs.

# Ports with a listener on any address (one `ss` call; cheaper than a bind test per port).
listening_ports() { ss -Hltn | awk '{ sub(/.*:/, "", $4); print $4 }' | sort -un; }

# Keeps every recorded port that is still free and picks a new one for each that is missing (an older state dir)
# or taken by another process.
ensure_ports() {
  load_ports
  local n p listening busy changed=()
  listening=" $(listening_ports | tr '\n' ' ') "
  busy=$listening
  for n in "${port_names[@]}"; do p=${!n}; [ -z "$p" ] || busy+="$p "; done
  for n in "${port_names[@]}"; do
    p=${!n}
    if [ -n "$p" ] && [[ $listening != *" $p "* ]]; then continue; fi
    while :; do
      p=$((20000 + RANDOM % 12000))
      [[ $busy == *" $p "* ]] || break
    done
    busy+="$p "
    printf -v "$n" '%s' "$p"
    changed+=("$n=$p")
  done
  if [ ${#changed[@]} -gt 0 ]; then
    for n in "${port_names[@]}"; do printf '%s=%s\n' "$n" "${!n}"; done >"$state/ports.env"
    log "chose ports: ${changed[*]}"
  else
    log "reusing ports: etcd $ETCD_CLIENT_PORT/$ETCD_PEER_PORT, apiserver $APISERVER_PORT"
  fi
}

# ---------------------------------------------------------------------------------------------------------------
# Certificates, made once and kept across `down` so that kubeconfigs and trust bundles handed out stay valid.
# EC P-256 for the TLS keys (fast to generate); RSA for the service-account key, because RS256 is what every
# JWT/OIDC consumer accepts.

# Runs openssl quietly; its output is shown only when it fails.
ossl() {
  local out
  out=$(openssl "$@" 2>&1) || { printf '%s\n' "$out" >&2; die "openssl $1 failed"; }
}

make_ca() { # make_ca <name> <common name>
  [ -f "$pki/$1.crt" ] && [ -f "$pki/$1.key" ] && return
  log "creating $1 ($2)"
  printf '[req]\ndistinguished_name=dn\nx509_extensions=ext\n[dn]\n[ext]\n%s\n%s\n%s\n' \
    'basicConstraints=critical,CA:TRUE' 'keyUsage=critical,keyCertSign,cRLSign' \
    'subjectKeyIdentifier=hash' >"$pki/openssl.cnf"
  ossl req -x509 -config "$pki/openssl.cnf" -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$pki/$1.key" -out "$pki/$1.crt" -days 3650 -subj "/CN=$2"
  rm -f "$pki/openssl.cnf"
}

make_leaf() { # make_leaf <name> <ca> <subject> <extendedKeyUsage> [subjectAltName]
  local name=$1 ca=$2 subj=$3 eku=$4 san=${5:-}
  # Kept unless it expires within a day (fail now, not later with an opaque TLS error) or this script now
  # asks for a different subject or different names (an older state dir).
  if [ -f "$pki/$name.crt" ] && [ -f "$pki/$name.key" ] &&
    openssl x509 -in "$pki/$name.crt" -noout -checkend 86400 >/dev/null 2>&1 &&
    [ "$(openssl x509 -in "$pki/$name.crt" -noout -subject -nameopt compat)" = "subject=$subj" ] &&
    [ "$({ cat "$pki/$name.san"; } 2>/dev/null)" = "$san" ]; then
    return
  fi
  log "creating $name certificate ($subj)"
  {
    echo 'basicConstraints=critical,CA:FALSE'
    echo 'keyUsage=critical,digitalSignature,keyEncipherment'
    echo "extendedKeyUsage=$eku"
    echo 'authorityKeyIdentifier=keyid'
    [ -z "$san" ] || echo "subjectAltName=$san"
  } >"$pki/$name.ext"
  ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/$name.key" \
    -subj "$subj" -out "$pki/$name.csr"
  ossl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$pki/$name.ext" -out "$pki/$name.crt"
  printf '%s' "$san" >"$pki/$name.san"
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

ensure_certs() {
  mkdir -p "$pki"
  # Private keys readable by the owner only.
  local old_umask; old_umask=$(umask); umask 077
  make_ca serving-ca agentiam-local-serving-ca
  make_ca client-ca agentiam-local-client-ca
  # localhost/127.0.0.1 for us; the in-cluster names, the first service IP and the node's address (the
  # kubernetes Service's endpoint) for pods and for clients configured the in-cluster way.
  make_leaf apiserver serving-ca /CN=kube-apiserver serverAuth \
    "DNS:localhost,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1,IP:$NODE_IP"
  # system:masters bypasses RBAC: the admin can do anything, while non-admin identities (ServiceAccount tokens,
  # the operator's chart RBAC) are still checked by RBAC.
  make_leaf admin client-ca /O=system:masters/CN=admin clientAuth
  # The controller manager gets its own name (readable audit and logs) but system:masters rights, because it
  # runs with --use-service-account-credentials=false: one identity for all controllers. kubeadm's way (one
  # ServiceAccount and token per controller, bootstrap RBAC) made a cold start 5-6 s slower here and tests
  # nothing of ours.
  make_leaf controller-manager client-ca /O=system:masters/CN=system:kube-controller-manager clientAuth
  if [ ! -f "$pki/sa.key" ] || [ ! -f "$pki/sa.pub" ]; then
    log "creating service-account signing key"
    ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
    ossl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
  fi
  umask "$old_umask"
}

write_kubeconfig() { # write_kubeconfig <file> <user> <cert name>
  local b64='base64 -w0'
  (umask 077 && cat >"$1.tmp") <<EOF
apiVersion: v1
kind: Config
clusters:
- name: agentiam-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $($b64 <"$pki/serving-ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$pki/$3.crt")
    client-key-data: $($b64 <"$pki/$3.key")
contexts:
- name: agentiam-local
  context:
    cluster: agentiam-local
    user: $2
    namespace: default
current-context: agentiam-local
EOF
  # Atomic, so a client reading it during `up` never sees half a file.
  mv "$1.tmp" "$1"
}

# ---------------------------------------------------------------------------------------------------------------
# Subcommands

ensure_binaries() {
  local b
  for b in "$ETCD_BIN" "$KUBE_BIN_DIR"/{kube-apiserver,kube-controller-manager,kubectl}; do
    [ -x "$b" ] && continue
    log "$b is missing; building the tools (first time on this machine only)"
    "$AGENTIAM_ROOT/tools/build-tools.sh" kubernetes etcd
    return
  done
}

run_etcd() {
  local t=$EPOCHREALTIME
  log "starting etcd $ETCD_VERSION"
  start_component etcd \
    --name=agentiam --data-dir="$state/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="agentiam=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync=true
  wait_until etcd 30 "etcd /health" etcd_healthy
  log "etcd healthy on 127.0.0.1:$ETCD_CLIENT_PORT ($(elapsed "$t")s)"
}

run_apiserver() {
  local t=$EPOCHREALTIME net
  log "starting kube-apiserver $KUBERNETES_VERSION"
  if node_enabled; then
    # Pods reach it through the kubernetes Service, whose endpoint is the node's address: it listens on every
    # address (client certificates or tokens required; anonymous requests see only health and version), and
    # calls the kubelet (logs, exec) with a client certificate, verifying the kubelet's.
    net=(--bind-address=0.0.0.0 --advertise-address="$NODE_IP"
      --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt"
      --kubelet-client-key="$pki/apiserver-kubelet-client.key"
      --kubelet-certificate-authority="$pki/serving-ca.crt" --kubelet-preferred-address-types=InternalIP)
  else
    net=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none)
  fi
  start_component kube-apiserver \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --secure-port="$APISERVER_PORT" "${net[@]}" \
    --cert-dir="$state/kube-apiserver" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/client-ca.crt" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-account-issuer="https://127.0.0.1:$APISERVER_PORT" \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --allow-privileged=true \
    --profiling=false
  wait_until kube-apiserver 120 "kube-apiserver /readyz" apiserver_healthy
  wait_until kube-apiserver 30 "namespace default" api_exists /api/v1/namespaces/default
  log "kube-apiserver ready on https://127.0.0.1:$APISERVER_PORT ($(elapsed "$t")s)"
}

run_controller_manager() {
  local t=$EPOCHREALTIME
  log "starting kube-controller-manager"
  start_component kube-controller-manager \
    --kubeconfig="$state/controller-manager.kubeconfig" \
    --use-service-account-credentials=false \
    --root-ca-file="$pki/serving-ca.crt" \
    --service-account-private-key-file="$pki/sa.key" \
    --cluster-signing-cert-file="$pki/client-ca.crt" --cluster-signing-key-file="$pki/client-ca.key" \
    --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port="$CONTROLLER_MANAGER_PORT" \
    --cert-dir="$state/kube-controller-manager" \
    --flex-volume-plugin-dir="$state/kube-controller-manager/flexvolume" \
    --profiling=false
  wait_until kube-controller-manager 60 "kube-controller-manager /healthz" controller_manager_healthy
  wait_until kube-controller-manager 60 "the controllers to start" controllers_started
  wait_until kube-controller-manager 60 "ServiceAccount default/default" \
    api_exists /api/v1/namespaces/default/serviceaccounts/default
  log "kube-controller-manager running ($(elapsed "$t")s)"
}

cmd_up() {
  local t0=$EPOCHREALTIME
  mkdir -p "$state"
  # Two concurrent `up`s (parallel make targets) must not both start a cluster.
  exec 9>"$state/.lock"
  flock 9
  load_ports
  mkdir -p "$state/logs"
  local want_node
  want_node=$(node_decide)
  # A cluster without its node is not healthy when the node is wanted now (AGENTIAM_NODE or root changed).
  if all_healthy && { [ "$want_node" = 0 ] || node_enabled; }; then
    log "cluster already healthy: https://127.0.0.1:$APISERVER_PORT (KUBECONFIG=$kubeconfig)$(node_enabled && echo ", node $NODE_NAME")"
    return
  fi
  touch "$marker"
  mkdir -p "$state/pids"
  # Anything half-running (a crashed apiserver, a leftover etcd) is restarted as a whole: a full restart costs
  # seconds and leaves only two states to reason about, healthy or not running.
  stop_all
  rm -f "$node_flag"
  components=("${control_plane[@]}")
  ensure_binaries
  ensure_certs
  ensure_ports
  if [ "$want_node" = 1 ]; then
    # In the background and waited for (set -e stays on inside): a failure (apt unreachable, a build that
    # fails) is required-or-skip, like a node that does not start.
    (node_prerequisites && node_certs) &
    if wait $!; then
      touch "$node_flag"
    else
      [ "$(node_mode)" = 1 ] && die "the node is required (AGENTIAM_NODE=1 or E2E_REQUIRED=1) and its prerequisites failed (above)"
      log "the node's prerequisites failed (above); going on without it, pods will stay Pending"
    fi
  fi
  write_kubeconfig "$kubeconfig" admin admin
  write_kubeconfig "$state/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  # However this run ends early (Ctrl-C, a failed check, an unexpected error under set -e), it stops what it
  # started; the next `up` then starts from a clean slate.
  trap 'log "interrupted"; exit 130' INT TERM
  trap stop_started EXIT

  run_etcd
  run_apiserver
  run_controller_manager
  if node_enabled; then
    # In a subshell with its own list of what it started: a node that fails stops only itself. Required, that
    # fails `up`; in auto mode the control plane goes on without it, as on a machine that cannot run one.
    # In the background and waited for, not as an `if` condition: there, set -e would be off inside it.
    (started=(); run_node) &
    if wait $!; then
      components+=("${node_components[@]}")
    else
      node_teardown || true
      rm -f "$node_flag"
      [ "$(node_mode)" = 1 ] && die "the node is required (AGENTIAM_NODE=1 or E2E_REQUIRED=1) and did not start"
      log "the node did not start (above: which part and its log); going on without it, pods will stay Pending"
    fi
  fi
  trap - INT TERM EXIT
  log "cluster up in $(elapsed "$t0")s: https://127.0.0.1:$APISERVER_PORT$(node_enabled && echo ", node $NODE_NAME Ready")"
  log "use it with: eval \"\$($0 env)\"   (or KUBECONFIG=$kubeconfig)"
}

cmd_down() {
  local purge=0
  case ${1:-} in
    '') ;;
    --purge) purge=1 ;;
    *) usage ;;
  esac
  if [ -d "$state" ]; then
    exec 9>"$state/.lock"
    flock 9
    stop_all
  fi
  if [ $purge = 1 ] && [ -d "$state" ]; then
    [ -f "$marker" ] || die "$state has no $(basename "$marker") marker; not deleting a directory we did not create"
    rm -rf -- "$state"
    log "removed $state"
  fi
  [ "$node_left" = 0 ] || die "the node left things behind (above); see tools/node.sh node_leftovers"
  log "cluster down"
}

# The API server alone, for tests of what clients do while it is gone and after it is back (tests/e2e/outage.rs).
# etcd and the controller manager keep running, as they would when a real control plane node restarts its
# kube-apiserver; --kill is a crash (SIGKILL: no graceful closing of watches), the default a clean stop.
apiserver_signal() { # prints TERM or KILL from the optional --kill flag
  case ${1:-} in
    '') echo TERM ;;
    --kill) echo KILL ;;
    *) usage ;;
  esac
}

cmd_stop_apiserver() {
  local signal; signal=$(apiserver_signal "${1:-}")
  [ -d "$state" ] || die "no cluster in $state"
  exec 9>"$state/.lock"
  flock 9
  stop_component kube-apiserver "$signal"
  log "kube-apiserver stopped; etcd and kube-controller-manager keep running"
}

cmd_start_apiserver() {
  [ -f "$state/ports.env" ] || die "no cluster in $state; run '$0 up' first"
  exec 9>"$state/.lock"
  flock 9
  load_ports
  if component_healthy kube-apiserver; then
    log "kube-apiserver already healthy: https://127.0.0.1:$APISERVER_PORT"
    return
  fi
  our_pid etcd >/dev/null && etcd_healthy || die "etcd is not running; run '$0 up' instead"
  # A recorded apiserver that runs but is unhealthy is replaced, like `up` does with a half-running cluster.
  stop_component kube-apiserver
  trap 'log "interrupted"; exit 130' INT TERM
  trap stop_started EXIT
  run_apiserver
  trap - INT TERM EXIT
}

cmd_restart_apiserver() {
  local signal=TERM down_for=0
  while [ $# -gt 0 ]; do
    case $1 in
      --kill) signal=KILL ;;
      --down-for) [ $# -ge 2 ] && [[ $2 =~ ^[0-9]+([.][0-9]+)?$ ]] || usage; down_for=$2; shift ;;
      *) usage ;;
    esac
    shift
  done
  local flag=''
  [ "$signal" = TERM ] || flag=--kill
  (cmd_stop_apiserver $flag)
  if [ "$down_for" != 0 ]; then
    log "keeping kube-apiserver down for ${down_for}s"
    sleep "$down_for"
  fi
  cmd_start_apiserver
}

cmd_status() {
  load_ports
  local c pid bad=0 where
  for c in "${components[@]}"; do
    case $c in
      etcd) where="http://127.0.0.1:$ETCD_CLIENT_PORT" ;;
      kube-apiserver) where="https://127.0.0.1:$APISERVER_PORT" ;;
      kube-controller-manager) where="https://127.0.0.1:$CONTROLLER_MANAGER_PORT/healthz" ;;
      containerd) where="unix://$containerd_sock" ;;
      kube-scheduler) where="https://127.0.0.1:$SCHEDULER_PORT/healthz" ;;
      kubelet) where="https://$NODE_IP:$KUBELET_PORT (node $NODE_NAME)" ;;
      kube-proxy) where="http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" ;;
      coredns) where="$NODE_IP:53" ;;
      local-path-provisioner) where="StorageClass standard ($node_dir/volumes)" ;;
    esac
    if ! pid=$(our_pid "$c"); then
      printf '%-24s not running\n' "$c"; bad=1
    elif component_healthy "$c"; then
      printf '%-24s healthy    pid %-8s %s\n' "$c" "$pid" "$where"
    else
      printf '%-24s UNHEALTHY  pid %-8s %s (log: %s)\n' "$c" "$pid" "$where" "$state/logs/$c.log"; bad=1
    fi
  done
  [ $bad = 0 ] && echo "kubeconfig: $kubeconfig"
  return $bad
}

cmd_env() {
  printf 'export KUBECONFIG=%q\n' "$kubeconfig"
  # The pinned kubectl first on PATH, so `kubectl version` matches the server.
  # shellcheck disable=SC2016 # $PATH is expanded by the caller's eval, not here
  printf 'export PATH=%q:"$PATH"\n' "$KUBE_BIN_DIR"
}

case ${1:-} in
  up) [ $# = 1 ] || usage; cmd_up ;;
  down) [ $# -le 2 ] || usage; cmd_down "${2:-}" ;;
  status) [ $# = 1 ] || usage; cmd_status ;;
  env) [ $# = 1 ] || usage; cmd_env ;;
  stop-apiserver) [ $# -le 2 ] || usage; cmd_stop_apiserver "${2:-}" ;;
  start-apiserver) [ $# = 1 ] || usage; cmd_start_apiserver ;;
  restart-apiserver) shift; cmd_restart_apiserver "$@" ;;
  *) usage ;;
esac
