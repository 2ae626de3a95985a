# The local node: containerd (with Debian's runc and CNI plugins), kubelet, kube-scheduler, kube-proxy, CoreDNS
# and local-path-provisioner beside the control plane of tools/cluster.sh, which sources this file. See
# docs/local-control-plane.md.
#
# One node per machine: it owns host-wide things (the bridge agentiam0 and its subnet, kube-proxy's iptables
# rules, containerd's shim sockets under /run/containerd/s), so a second cluster directory runs without one.
# It needs root (network namespaces, mounts, cgroups).
#
#   bridge agentiam0 10.244.0.1/24   pods' network (CNI bridge + host-local); the node's InternalIP
#   10.0.0.0/24                      Services (kube-proxy, iptables mode); routed into the bridge
#   10.244.0.1:53                    cluster DNS (CoreDNS on the host, kubernetes plugin); pods' nameserver
#   kube-apiserver                   bound to all addresses (pods reach it as kubernetes.default through
#                                    10.244.0.1); kubelet on 10.244.0.1 only
# shellcheck shell=bash

NODE_NAME=agentiam-node
NODE_BRIDGE=agentiam0
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.0.0.0/24
node_dir=$state/node
node_components=(containerd kube-scheduler kubelet kube-proxy coredns local-path-provisioner)
CONTAINERD_DIR=$AGENTIAM_TOOLS_CACHE/containerd-$CONTAINERD_VERSION
COREDNS_BIN=$AGENTIAM_TOOLS_CACHE/coredns-$COREDNS_VERSION/coredns
LOCAL_PATH_BIN=$AGENTIAM_TOOLS_CACHE/local-path-provisioner-$LOCAL_PATH_PROVISIONER_VERSION/local-path-provisioner

# ---------------------------------------------------------------------------------------------------------------
# Whether to run the node. AGENTIAM_NODE=auto (the default) runs it where it can and says why not where it
# cannot; 1 requires it (E2E_REQUIRED=1 implies it); 0 never runs it.

node_mode() {
  local m=${AGENTIAM_NODE:-auto}
  [ "${E2E_REQUIRED:-0}" = 1 ] && [ "$m" = auto ] && m=1
  case $m in
    auto | 1 | 0) echo "$m" ;;
    *) die "AGENTIAM_NODE must be auto, 1 or 0 (got '$m')" ;;
  esac
}

# Prints why the node cannot run here, or nothing.
node_blocker() {
  [ "$(id -u)" = 0 ] || { echo "it needs root (network namespaces, mounts, cgroups); running as $(id -un)"; return; }
  [ -d /sys/fs/cgroup ] || { echo "there is no /sys/fs/cgroup"; return; }
  [ -d /proc/sys/net/bridge ] || [ -w /proc/sys/net/ipv4/ip_forward ] ||
    { echo "the kernel offers no bridge netfilter or IP forwarding"; return; }
  local owner
  owner=$({ cat "$NODE_RUN/owner"; } 2>/dev/null) || true
  if [ -n "$owner" ] && [ "$owner" != "$state" ] && [ -d "$owner" ] && pgrep -f -- "--root-dir=$owner/node/kubelet" >/dev/null; then
    echo "the node of $owner runs on this machine (one node per machine)"; return
  fi
}

# Decides for this `up`: prints 1 to run the node, 0 not to; dies when the node is required but cannot run.
node_decide() {
  local mode why
  mode=$(node_mode)
  [ "$mode" = 0 ] && { echo 0; return; }
  why=$(node_blocker)
  if [ -n "$why" ]; then
    [ "$mode" = 1 ] && die "the node is required (AGENTIAM_NODE=1 or E2E_REQUIRED=1) but cannot run: $why"
    log "no node: $why; pods will stay Pending (AGENTIAM_NODE=0 silences this)"
    echo 0; return
  fi
  echo 1
}

# ---------------------------------------------------------------------------------------------------------------
# Host prerequisites: Debian's runc, CNI plugins, umoci, iptables and conntrack; our binaries; sysctls; bridge.

deb_install() { # deb_install <package> <pinned version>...: the pinned version, else the archive's (and say so)
  local want=() missing=() pkg ver
  while [ $# -gt 0 ]; do
    pkg=$1 ver=$2; shift 2
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] && continue
    missing+=("$pkg"); want+=("$pkg=$ver")
  done
  [ ${#missing[@]} = 0 ] && return
  log "installing Debian packages: ${want[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || log "apt-get update failed; trying the package lists we have"
  if ! apt-get install -y -qq "${want[@]}" >"$state/logs/apt.log" 2>&1; then
    log "the pinned versions are gone from the archive (a Debian update); installing its current ones"
    apt-get install -y -qq "${missing[@]}" >>"$state/logs/apt.log" 2>&1 ||
      { tail -n 20 "$state/logs/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
    for pkg in "${missing[@]}"; do log "installed $pkg $(dpkg-query -W -f='${Version}' "$pkg")"; done
  fi
}

node_prerequisites() {
  deb_install runc "$DEB_RUNC_VERSION" containernetworking-plugins "$DEB_CNI_PLUGINS_VERSION" \
    umoci "$DEB_UMOCI_VERSION" iptables "$DEB_IPTABLES_VERSION" conntrack "$DEB_CONNTRACK_VERSION" \
    busybox-static "$DEB_BUSYBOX_STATIC_VERSION"
  local b
  for b in "$KUBE_BIN_DIR"/{kubelet,kube-scheduler,kube-proxy} "$CONTAINERD_DIR"/{containerd,containerd-shim-runc-v2,ctr} \
    "$COREDNS_BIN" "$CRICTL_BIN" "$LOCAL_PATH_BIN"; do
    [ -x "$b" ] && continue
    log "$b is missing; building the node's tools (first time on this machine only)"
    "$AGENTIAM_ROOT/tools/build-tools.sh" kubernetes containerd coredns crictl local-path-provisioner
    break
  done
  # What every Kubernetes node sets: routing between the bridge and the host, and Service rules (kube-proxy's
  # iptables) applied to traffic between two pods on the same bridge.
  sysctl -qw net.ipv4.ip_forward=1
  [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || sysctl -qw net.bridge.bridge-nf-call-iptables=1
  mkdir -p "$NODE_RUN" "$node_dir"
  echo "$state" >"$NODE_RUN/owner"
  # The bridge exists before kubelet (its address is the node's InternalIP) and the API server (its advertise
  # address); the CNI bridge plugin adopts it.
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
  fi
  ip addr show dev "$NODE_BRIDGE" | grep -qF "inet $NODE_IP/" || ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Services' virtual IPs have no route of their own; without one, a host without a default route could not
  # even start a connection to them before kube-proxy's DNAT rewrites it.
  ip route replace "$SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
}

node_certs() {
  local old_umask; old_umask=$(umask); umask 077
  make_leaf kubelet client-ca "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  make_leaf kubelet-serving serving-ca "/CN=$NODE_NAME" serverAuth "DNS:$NODE_NAME,IP:$NODE_IP"
  make_leaf apiserver-kubelet-client client-ca /O=system:masters/CN=kube-apiserver-kubelet-client clientAuth
  make_leaf kube-scheduler client-ca /CN=system:kube-scheduler clientAuth
  make_leaf kube-proxy client-ca /CN=system:kube-proxy clientAuth
  make_leaf coredns client-ca /CN=system:coredns clientAuth
  make_leaf local-path-provisioner client-ca /CN=system:local-path-provisioner clientAuth
  umask "$old_umask"
  write_kubeconfig "$state/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet
  write_kubeconfig "$state/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler
  write_kubeconfig "$state/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
  write_kubeconfig "$state/coredns.kubeconfig" system:coredns coredns
  write_kubeconfig "$state/local-path-provisioner.kubeconfig" system:local-path-provisioner local-path-provisioner
}

# ---------------------------------------------------------------------------------------------------------------
# Components

containerd_sock=$NODE_CRI_SOCKET
crictl() { "$CRICTL_BIN" --runtime-endpoint "unix://$containerd_sock" --timeout 10s "$@"; }
ctr() { "$CONTAINERD_DIR/ctr" -a "$containerd_sock" "$@"; }

# 1 if this process may lower its OOM score (CAP_SYS_RESOURCE), tried on a throwaway child.
oom_lowerable() { (echo -1 >/proc/self/oom_score_adj) 2>/dev/null && echo 1 || echo 0; }

containerd_healthy() { [ -S "$containerd_sock" ] && ctr version >/dev/null 2>&1; }

run_containerd() {
  local t=$EPOCHREALTIME pause
  pause=$("$AGENTIAM_ROOT/tools/images.sh" ref pause)
  mkdir -p "$node_dir/cni/net.d" "$node_dir/cni/ipam"
  cat >"$node_dir/cni/net.d/10-agentiam.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "agentiam",
  "plugins": [
    {
      "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$node_dir/cni/ipam",
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$NODE_IP" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  cat >"$node_dir/containerd.toml" <<EOF
version = 3
root = '$node_dir/containerd'
state = '$NODE_RUN/containerd'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      # Built by tools/images.sh from tools/images/pause.c; nothing is pulled.
      sandbox = '$pause'
  [plugins.'io.containerd.cri.v1.runtime']
    netns_mounts_under_state_dir = true
    # Lowering an OOM score needs CAP_SYS_RESOURCE, which these machines do not give even to root: sandboxes
    # (-998) and Guaranteed pods (-997) would not start. Restricted, containerd clamps scores to its own.
    restrict_oom_score_adj = $( [ "$(oom_lowerable)" = 1 ] && echo false || echo true )
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '$(command -v runc)'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['/usr/lib/cni']
      conf_dir = '$node_dir/cni/net.d'
  [plugins.'io.containerd.server.v1.grpc']
    address = '$containerd_sock'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '$containerd_sock.ttrpc'
EOF
  log "starting containerd $CONTAINERD_VERSION"
  # The shim is found on PATH.
  PATH=$CONTAINERD_DIR:$PATH start_component containerd --config "$node_dir/containerd.toml"
  wait_until containerd 30 "containerd's socket" containerd_healthy
  # The images pods use, from the archives tools/images.sh builds (the sandbox first: no pod starts without it).
  AGENTIAM_CLUSTER_DIR=$state "$AGENTIAM_ROOT/tools/images.sh" import pause >/dev/null
  log "containerd running ($(elapsed "$t")s)"
}

scheduler_healthy() {
  [ "$(curl -fsSk --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz" 2>/dev/null)" = ok ]
}

run_scheduler() {
  local t=$EPOCHREALTIME k=$state/kube-scheduler.kubeconfig
  log "starting kube-scheduler"
  start_component kube-scheduler --kubeconfig="$k" --authentication-kubeconfig="$k" --authorization-kubeconfig="$k" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" \
    --cert-dir="$state/kube-scheduler" --profiling=false
  wait_until kube-scheduler 60 "kube-scheduler /healthz" scheduler_healthy
  log "kube-scheduler running ($(elapsed "$t")s)"
}

kubelet_healthy() {
  [ "$(curl -fsS --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" 2>/dev/null)" = ok ]
}

node_ready() {
  [ "$("$KUBE_BIN_DIR/kubectl" --kubeconfig "$kubeconfig" get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

run_kubelet() {
  local t=$EPOCHREALTIME
  mkdir -p "$node_dir/kubelet" "$node_dir/pod-logs" "$node_dir/volume-plugins"
  cat >"$node_dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine's /sys/fs/cgroup is cgroup v1, which kubelet refuses since 1.35 unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$containerd_sock
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
rotateCertificates: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $pki/client-ca.crt
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
# Only cluster DNS: the machine has no resolver for anything else, and pods must not inherit the host's.
resolvConf: ""
podLogsDir: $node_dir/pod-logs
volumePluginDir: $node_dir/volume-plugins
# The images come from archives, not a registry: garbage-collecting one would make its pods unstartable.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Test machines run with little free disk at times; evict only when really out of it.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
maxPods: 110
# How often kubelet re-syncs each pod, and so how soon a changed Secret (a renewed token) reaches the files of
# a running pod. The default 1m (plus jitter) is longer than the last fifth of a short token lifetime (24 s of
# a 2m token): the tests use short lifetimes, so the node syncs every 10 s. docs/credentials.md says what
# this means on a default kubelet.
syncFrequency: 10s
serializeImagePulls: false
EOF
  log "starting kubelet $KUBERNETES_VERSION"
  start_component kubelet --config="$node_dir/kubelet.yaml" --kubeconfig="$state/kubelet.kubeconfig" \
    --root-dir="$node_dir/kubelet" --cert-dir="$node_dir/kubelet/pki" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
  wait_until kubelet 60 "kubelet /healthz" kubelet_healthy
  wait_until kubelet 90 "node $NODE_NAME to be Ready" node_ready
  log "kubelet running, node $NODE_NAME Ready ($(elapsed "$t")s)"
}

kube_proxy_healthy() {
  curl -fsS --max-time 2 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" >/dev/null 2>&1
}

run_kube_proxy() {
  local t=$EPOCHREALTIME
  log "starting kube-proxy (iptables)"
  # The conntrack flags keep it from changing the kernel's conntrack table size and timeouts (host-wide), and
  # localhost NodePorts would need route_localnet on every interface; nothing here uses NodePorts on loopback.
  start_component kube-proxy --kubeconfig="$state/kube-proxy.kubeconfig" --hostname-override="$NODE_NAME" \
    --proxy-mode=iptables --cluster-cidr="$POD_CIDR" \
    --healthz-bind-address="127.0.0.1:$PROXY_HEALTHZ_PORT" --metrics-bind-address="127.0.0.1:$PROXY_METRICS_PORT" \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --iptables-localhost-nodeports=false --nodeport-addresses=primary --profiling=false
  wait_until kube-proxy 60 "kube-proxy /healthz" kube_proxy_healthy
  log "kube-proxy running ($(elapsed "$t")s)"
}

coredns_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$COREDNS_READY_PORT/ready" >/dev/null 2>&1; }

run_coredns() {
  local t=$EPOCHREALTIME
  # Read access to what the kubernetes plugin serves, for the identity of coredns.kubeconfig.
  "$KUBE_BIN_DIR/kubectl" --kubeconfig "$kubeconfig" apply --server-side --force-conflicts -f - >/dev/null <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "agentiam-local:coredns"}
rules:
  - {apiGroups: [""], resources: [services, pods, namespaces], verbs: [list, watch]}
  - {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "agentiam-local:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "agentiam-local:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}]
EOF
  cat >"$node_dir/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$COREDNS_HEALTH_PORT
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $state/coredns.kubeconfig agentiam-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
  log "starting CoreDNS $COREDNS_VERSION on $NODE_IP:53"
  start_component coredns -conf "$node_dir/Corefile"
  wait_until coredns 60 "CoreDNS /ready" coredns_ready
  log "CoreDNS running ($(elapsed "$t")s)"
}

local_path_healthy() { our_pid local-path-provisioner >/dev/null; }

# The default StorageClass `standard`: Rancher's local-path-provisioner, on the host, gives each claim a
# directory under $node_dir/volumes, made (mode 0777) and removed by a helper pod from our busybox image, so
# that a pod running as any user can write to its volume (kube-controller-manager's hostPath provisioner
# makes root-owned 0750 directories, which a non-root pod cannot use).
run_local_path_provisioner() {
  local t=$EPOCHREALTIME busybox ns=local-path-storage sa=local-path-provisioner-service-account
  busybox=$(AGENTIAM_CLUSTER_DIR=$state "$AGENTIAM_ROOT/tools/images.sh" import busybox)
  mkdir -p "$node_dir/volumes"
  # A StorageClass's provisioner cannot change: one of another provisioner (an older state dir) is replaced.
  local prov
  prov=$("$KUBE_BIN_DIR/kubectl" --kubeconfig "$kubeconfig" get storageclass standard -o 'jsonpath={.provisioner}' 2>/dev/null) || true
  if [ -n "$prov" ] && [ "$prov" != rancher.io/local-path ]; then
    "$KUBE_BIN_DIR/kubectl" --kubeconfig "$kubeconfig" delete storageclass standard >/dev/null
  fi
  "$KUBE_BIN_DIR/kubectl" --kubeconfig "$kubeconfig" apply --server-side --force-conflicts -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $ns}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: $sa, namespace: $ns}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "agentiam-local:local-path-provisioner"}
rules:
  - {apiGroups: [""], resources: [nodes, persistentvolumeclaims, configmaps, pods, pods/log], verbs: [get, list, watch]}
  - {apiGroups: [""], resources: [persistentvolumes], verbs: [get, list, watch, create, patch, update, delete]}
  - {apiGroups: [""], resources: [events], verbs: [create, patch]}
  - {apiGroups: [storage.k8s.io], resources: [storageclasses], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "agentiam-local:local-path-provisioner"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "agentiam-local:local-path-provisioner"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:local-path-provisioner"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: helper-pods, namespace: $ns}
rules:
  - {apiGroups: [""], resources: [pods], verbs: [get, list, watch, create, patch, update, delete]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: helper-pods, namespace: $ns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: helper-pods}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:local-path-provisioner"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: local-path-config, namespace: $ns}
data:
  config.json: '{"nodePathMap":[{"node":"DEFAULT_PATH_FOR_NON_LISTED_NODES","paths":["$node_dir/volumes"]}]}'
  setup: |-
    #!/bin/sh
    set -eu
    mkdir -m 0777 -p "\$VOL_DIR"
  teardown: |-
    #!/bin/sh
    set -eu
    rm -rf "\$VOL_DIR"
  helperPod.yaml: |-
    apiVersion: v1
    kind: Pod
    metadata:
      name: helper-pod
    spec:
      priorityClassName: system-node-critical
      tolerations:
        - {key: node.kubernetes.io/disk-pressure, operator: Exists, effect: NoSchedule}
      containers:
        - name: helper-pod
          image: $busybox
          imagePullPolicy: Never
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: rancher.io/local-path
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
EOF
  log "starting local-path-provisioner $LOCAL_PATH_PROVISIONER_VERSION (StorageClass standard, $node_dir/volumes)"
  start_component local-path-provisioner start --kubeconfig "$state/local-path-provisioner.kubeconfig" \
    --namespace "$ns" --service-account-name "$sa" --configmap-name local-path-config \
    --provisioner-name rancher.io/local-path --helper-image "$busybox"
  # It serves no health endpoint: alive after a moment, with its configuration read, is the check.
  sleep 1
  wait_until local-path-provisioner 10 "local-path-provisioner to run" local_path_healthy
  log "local-path-provisioner running ($(elapsed "$t")s)"
}

run_node() {
  local t=$EPOCHREALTIME
  run_containerd
  run_scheduler
  # kube-proxy waits for its Node object, which kubelet registers.
  run_kubelet
  run_kube_proxy
  run_coredns
  run_local_path_provisioner
  log "node $NODE_NAME up in $(elapsed "$t")s"
}

# ---------------------------------------------------------------------------------------------------------------
# Teardown: no container, mount, rule or bridge of the node outlives `down`.

node_teardown() {
  # kubelet first, so that nothing restarts what is removed next.
  stop_component kubelet
  if containerd_healthy && [ -x "$CRICTL_BIN" ]; then
    # Through the CRI, as kubeadm reset does: containerd stops the containers, calls the CNI plugins' DEL
    # (veth, IP allocation) and removes each sandbox's network namespace and mounts.
    local pods
    pods=$(crictl pods -q 2>/dev/null) || true
    if [ -n "$pods" ]; then
      log "removing $(wc -l <<<"$pods") pod sandbox(es)"
      # shellcheck disable=SC2086 # one argument per sandbox id
      crictl stopp $pods >/dev/null 2>&1 || true
      # shellcheck disable=SC2086
      crictl rmp -f $pods >/dev/null 2>&1 || log "crictl rmp failed; removing what is left by hand"
    fi
  fi
  stop_component containerd
  # Shims of tasks that survived (containerd gone before they were deleted): their containers die with them.
  local shim
  for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $containerd_sock" || true); do
    pkill -KILL -P "$shim" 2>/dev/null || true
    kill -KILL "$shim" 2>/dev/null || true
  done
  stop_component kube-proxy
  # kube-proxy leaves its rules behind when it stops; --cleanup removes them (and exits).
  if [ -x "$KUBE_BIN_DIR/kube-proxy" ] && iptables -t nat -nL KUBE-SERVICES >/dev/null 2>&1; then
    "$KUBE_BIN_DIR/kube-proxy" --cleanup >>"$state/logs/kube-proxy.log" 2>&1 || log "kube-proxy --cleanup failed"
  fi
  # kubelet's own chains (canaries, the iptables-mode hint, a rule dropping non-loopback packets to 127/8).
  local ipt table
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      "$ipt" -t "$table" -D INPUT -j KUBE-FIREWALL 2>/dev/null || true
      "$ipt" -t "$table" -D OUTPUT -j KUBE-FIREWALL 2>/dev/null || true
      "$ipt" -t "$table" -F KUBE-FIREWALL 2>/dev/null && "$ipt" -t "$table" -X KUBE-FIREWALL 2>/dev/null || true
      "$ipt" -t "$table" -X KUBE-KUBELET-CANARY 2>/dev/null || true
      "$ipt" -t "$table" -X KUBE-IPTABLES-HINT 2>/dev/null || true
    done
  done
  stop_component local-path-provisioner
  stop_component coredns
  stop_component kube-scheduler
  # Whatever the node mounted (pod volumes, overlay rootfs, netns), deepest first.
  local m
  for m in $(findmnt -rn -o TARGET | grep -E "^($node_dir|$NODE_RUN)/" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip route del "$SERVICE_CIDR" dev "$NODE_BRIDGE" 2>/dev/null || true
    ip link del "$NODE_BRIDGE" 2>/dev/null || log "could not delete bridge $NODE_BRIDGE"
  fi
  rm -f "$NODE_RUN/owner"
  # What `down` promises, checked: a leftover is named, and fails `down`.
  local left
  left=$(node_leftovers)
  if [ -n "$left" ]; then
    log "error: the node left behind: $left"
    return 1
  fi
}

node_leftovers() { # prints what of the node still exists, comma-separated; nothing when all is gone
  local left=()
  pgrep -f "containerd-shim-runc-v2 .*-address $containerd_sock" >/dev/null && left+=("containerd shims (containers)")
  findmnt -rn -o TARGET | grep -qE "^($node_dir|$NODE_RUN)/" && left+=("mounts under $node_dir or $NODE_RUN")
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && left+=("bridge $NODE_BRIDGE")
  # host-local keeps one file per address it handed out until the CNI DEL of that sandbox.
  compgen -G "$node_dir/cni/ipam/agentiam/10.*" >/dev/null && left+=("pod IP allocations (sandboxes without CNI DEL)")
  iptables-save 2>/dev/null | grep -q -- '-j KUBE-' && left+=("iptables rules jumping to KUBE- chains")
  local IFS=,
  echo "${left[*]}"
}

node_running() { # true if any node component of this state dir runs
  local c
  for c in "${node_components[@]}"; do our_pid "$c" >/dev/null && return 0; done
  return 1
}
