# Shared helpers for the scripts in tools/. Source it; it only defines variables and functions.
# shellcheck shell=bash

AGENTIAM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=versions.env
source "$AGENTIAM_ROOT/tools/versions.env"

# Same cache layout as tools/build-tools.sh: <cache>/<name>-<version>/<binary>.
AGENTIAM_TOOLS_CACHE=${AGENTIAM_TOOLS_CACHE:-$HOME/.cache/agentiam-tools}
KUBE_BIN_DIR=$AGENTIAM_TOOLS_CACHE/kubernetes-$KUBERNETES_VERSION
ETCD_BIN=$AGENTIAM_TOOLS_CACHE/etcd-$ETCD_VERSION/etcd
HELM_BIN=$AGENTIAM_TOOLS_CACHE/helm-$HELM_VERSION/helm
PROMTOOL_BIN=$AGENTIAM_TOOLS_CACHE/promtool-$PROMETHEUS_VERSION/promtool
CRICTL_BIN=$AGENTIAM_TOOLS_CACHE/crictl-$CRICTL_VERSION/crictl
NGINX_BIN=$AGENTIAM_TOOLS_CACHE/nginx-$DEB_NGINX_VERSION/nginx
# The local node's runtime state (tools/node.sh): one node per machine, so one fixed place.
NODE_RUN=/run/agentiam-node
NODE_CRI_SOCKET=$NODE_RUN/containerd.sock
# The node's address on its bridge (agentiam0): its InternalIP, and where pods reach the host.
NODE_IP=10.244.0.1
# Exported for the same reason the values exist: scripts that source lib.sh hand them to their children.
export AGENTIAM_ROOT AGENTIAM_TOOLS_CACHE KUBE_BIN_DIR ETCD_BIN HELM_BIN PROMTOOL_BIN NGINX_BIN

# Progress goes to stderr so that stdout stays machine-readable (`eval "$(tools/cluster.sh env)"`).
LOG_TAG=${LOG_TAG:-tools}
log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Wall-clock seconds since $1 (an $EPOCHREALTIME value), with one decimal.
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# wait_started <what> <pid> <log> <seconds> <command...>: until the command succeeds; dies with the log's
# tail if the process <pid> exits first or <seconds> pass. For the peers the tools start (Keycloak, SPIRE).
wait_started() {
  local what=$1 pid=$2 logfile=$3 limit=$4; shift 4
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$logfile" >&2
      die "$what exited while starting (log: $logfile)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 40 "$logfile" >&2
      die "$what was not ready within $limit s (log: $logfile)"
    fi
    sleep 0.2
  done
}
