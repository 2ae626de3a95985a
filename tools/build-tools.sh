#!/usr/bin/env bash
# Builds the test and benchmark tools (kube-apiserver, kube-controller-manager, kubectl, kube-scheduler, kubelet,
# kube-proxy, etcd, helm, opa, promtool, spire-server and spire-agent, containerd, coredns, crictl and local-path-provisioner)
# from their published Go modules, pinned in tools/versions.env, into a cache outside the clone:
#   ${AGENTIAM_TOOLS_CACHE:-~/.cache/agentiam-tools}/<name>-<version>/<binary>
# A tool already in the cache is not rebuilt, so only the first run on a machine is slow.
# Usage: tools/build-tools.sh [kubernetes] [etcd] [helm] [opa] [promtool] [spire] [containerd] [coredns] [crictl]
#        [local-path-provisioner]
#        (default: kubernetes etcd helm)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${AGENTIAM_TOOLS_CACHE:-$HOME/.cache/agentiam-tools}
mkdir -p "$cache"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
# Module sources live in Go's own module cache; our wrapper modules live beside the binaries.
log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# build_wrapper <dir> <go.mod text> <ldflags> <out-dir> <package>...
build_in_wrapper() {
  local dir=$1 ldflags=$2 out=$3; shift 3
  local pkg
  for pkg in "$@"; do
    local bin; bin=$(basename "$pkg")
    [ "$bin" = v3 ] && bin=etcd
    if [ -x "$out/$bin" ]; then log "$bin cached at $out/$bin"; continue; fi
    log "building $bin ($pkg); on a fresh machine (empty Go caches) a Kubernetes binary takes 10-25 minutes"
    local start=$SECONDS
    (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$out/$bin.partial" "$pkg")
    mv "$out/$bin.partial" "$out/$bin"
    log "built $bin in $((SECONDS - start))s"
  done
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION out=$cache/kubernetes-$KUBERNETES_VERSION
  local bins=(kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet kube-proxy)
  local missing=0 b
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || missing=1; done
  if [ $missing = 0 ]; then log "kubernetes $v cached in $out"; return; fi
  mkdir -p "$out"
  local wrap=$cache/src/kubernetes-$v
  mkdir -p "$wrap"
  log "resolving k8s.io/kubernetes@$v and its staging modules"
  local gomod
  gomod=$(cd "$wrap" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  local staging_version="v0.${v#v1.}"
  {
    echo "module agentiam.dev/tools/kubernetes"
    echo
    grep -E '^go [0-9.]+$' "$gomod"
    grep -E '^godebug ' "$gomod" || true
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    echo "tool ("
    echo "  k8s.io/kubernetes/cmd/kube-apiserver"
    echo "  k8s.io/kubernetes/cmd/kube-controller-manager"
    echo "  k8s.io/kubernetes/cmd/kubectl"
    echo "  k8s.io/kubernetes/cmd/kube-scheduler"
    echo "  k8s.io/kubernetes/cmd/kubelet"
    echo "  k8s.io/kubernetes/cmd/kube-proxy"
    echo ")"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#  \1 => \1 '"$staging_version"'#p' "$gomod"
    echo ")"
  } > "$wrap/go.mod"
  (cd "$wrap" && go mod tidy)
  local pkgv=k8s.io/component-base/version cgv=k8s.io/client-go/pkg/version
  local minor=${v#v1.}; minor=${minor%%.*}
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w"
  local p
  for p in $pkgv $cgv; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitCommit=release-$v"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  build_in_wrapper "$wrap" "$ld" "$out" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
}

build_etcd() {
  local v=$ETCD_VERSION out=$cache/etcd-$ETCD_VERSION
  if [ -x "$out/etcd" ]; then log "etcd $v cached in $out"; return; fi
  mkdir -p "$out"
  local wrap=$cache/src/etcd-$v
  mkdir -p "$wrap"
  # etcd's own go.mod replaces its sibling modules with local paths; a wrapper module ignores those.
  printf 'module agentiam.dev/tools/etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n\ntool go.etcd.io/etcd/server/v3\n' "$v" \
    > "$wrap/go.mod"
  (cd "$wrap" && go mod tidy)
  build_in_wrapper "$wrap" "-s -w" "$out" go.etcd.io/etcd/server/v3
}

build_simple() { # build_simple <name> <module> <version> <package> <ldflags>
  local name=$1 mod=$2 v=$3 pkg=$4 ld=$5 out=$cache/$1-$3
  if [ -x "$out/$name" ]; then log "$name $v cached in $out"; return; fi
  mkdir -p "$out"
  local wrap=$cache/src/$name-$v
  mkdir -p "$wrap"
  printf 'module agentiam.dev/tools/%s\n\ngo 1.26\n\nrequire %s %s\n\ntool %s\n' "$name" "$mod" "$v" "$pkg" > "$wrap/go.mod"
  (cd "$wrap" && go mod tidy)
  build_in_wrapper "$wrap" "$ld" "$out" "$pkg"
}

build_helm() {
  local kmin=${KUBERNETES_VERSION#v1.}; kmin=${kmin%%.*}
  # Without these, helm assumes Kubernetes 1.20 for template and lint.
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kmin"
  ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kmin"
  build_simple helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$ld"
}

build_promtool() {
  # Prometheus' Go module versions are v0.<minor><patch>.x for release 3.<minor>.<patch>.
  build_simple promtool github.com/prometheus/prometheus "$PROMETHEUS_VERSION" \
    github.com/prometheus/prometheus/cmd/promtool "-s -w"
}

build_spire() {
  # Two commands of one module, and cgo: SPIRE's sqlite3 datastore (mattn/go-sqlite3) does not work without it.
  local v=$SPIRE_VERSION out=$cache/spire-$SPIRE_VERSION
  if [ -x "$out/spire-server" ] && [ -x "$out/spire-agent" ]; then log "spire $v cached in $out"; return; fi
  command -v gcc >/dev/null || { log "error: SPIRE's sqlite3 datastore needs cgo, and there is no gcc"; exit 1; }
  mkdir -p "$out"
  local wrap=$cache/src/spire-$v
  mkdir -p "$wrap"
  printf 'module agentiam.dev/tools/spire\n\ngo 1.26\n\nrequire github.com/spiffe/spire %s\n\ntool (\n  github.com/spiffe/spire/cmd/spire-server\n  github.com/spiffe/spire/cmd/spire-agent\n)\n' "$v" >"$wrap/go.mod"
  (cd "$wrap" && go mod tidy)
  CGO_ENABLED=1 build_in_wrapper "$wrap" "-s -w" "$out" \
    github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
}

build_containerd() {
  # The daemon, its runc shim and ctr (images import), from one module. Without cgo the btrfs snapshotter is left
  # out (its build tag needs cgo); the node uses overlayfs.
  local v=$CONTAINERD_VERSION out=$cache/containerd-$CONTAINERD_VERSION
  if [ -x "$out/containerd" ] && [ -x "$out/containerd-shim-runc-v2" ] && [ -x "$out/ctr" ]; then
    log "containerd $v cached in $out"; return
  fi
  mkdir -p "$out"
  local wrap=$cache/src/containerd-$v m=github.com/containerd/containerd/v2
  mkdir -p "$wrap"
  printf 'module agentiam.dev/tools/containerd\n\ngo 1.26\n\nrequire %s %s\n\ntool (\n  %s/cmd/containerd\n  %s/cmd/containerd-shim-runc-v2\n  %s/cmd/ctr\n)\n' \
    "$m" "$v" "$m" "$m" "$m" >"$wrap/go.mod"
  (cd "$wrap" && go mod tidy)
  build_in_wrapper "$wrap" "-s -w -X $m/version.Version=$v -X $m/version.Revision=release-$v" "$out" \
    "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr"
}

build_coredns() {
  # The cluster DNS of the local node (tools/node.sh runs it on the host, serving the kubernetes plugin).
  build_simple coredns github.com/coredns/coredns "$COREDNS_VERSION" github.com/coredns/coredns \
    "-s -w -X github.com/coredns/coredns/coremain.GitCommit=release-$COREDNS_VERSION"
}

build_crictl() {
  # The CRI client: `tools/cluster.sh down` removes the node's pod sandboxes through containerd's CRI (which
  # tears down their network namespaces and mounts), as kubeadm reset does.
  build_simple crictl sigs.k8s.io/cri-tools "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl \
    "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
}

build_local_path_provisioner() {
  # The node's default StorageClass (tools/node.sh runs it on the host): a directory per claim, made by a
  # helper pod with mode 0777, so that pods running as any user can write to their volume.
  build_simple local-path-provisioner github.com/rancher/local-path-provisioner "$LOCAL_PATH_PROVISIONER_VERSION" \
    github.com/rancher/local-path-provisioner "-s -w -X main.VERSION=$LOCAL_PATH_PROVISIONER_VERSION"
}

build_opa() {
  build_simple opa github.com/open-policy-agent/opa "$OPA_VERSION" github.com/open-policy-agent/opa \
    "-s -w -X github.com/open-policy-agent/opa/v1/version.Version=${OPA_VERSION#v}"
}

# A Debian package's files, extracted into the cache (never installed: the package's scripts would start a
# system nginx on port 80). The binary's libraries (OpenSSL, PCRE2, zlib) are the system's.
fetch_deb() { # fetch_deb <name> <package> <version> <path of the binary in the package>
  local name=$1 pkg=$2 v=$3 bin=$4 out=$cache/$1-$3
  if [ -x "$out/$(basename "$bin")" ]; then log "$name $v cached in $out"; return; fi
  local tmp=$cache/src/$name-$v.partial
  rm -rf "$tmp"; mkdir -p "$tmp"
  (cd "$tmp" && apt-get download -qq "$pkg=$v" >/dev/null 2>&1) || {
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$tmp" && apt-get download -qq "$pkg=$v" >/dev/null 2>&1)
  } || { echo "apt-get download $pkg=$v failed (a Debian update may have replaced it: see tools/versions.env)" >&2; exit 1; }
  dpkg-deb -x "$tmp"/*.deb "$tmp/root"
  mkdir -p "$out"
  cp "$tmp/root/$bin" "$out/"
  rm -rf "$tmp"
  log "$name $v extracted into $out"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(kubernetes etcd helm)
for t in "${targets[@]}"; do
  case $t in
    kubernetes) build_kubernetes ;;
    etcd) build_etcd ;;
    helm) build_helm ;;
    opa) build_opa ;;
    nginx) fetch_deb nginx nginx "$DEB_NGINX_VERSION" usr/sbin/nginx ;;
    promtool) build_promtool ;;
    spire) build_spire ;;
    containerd) build_containerd ;;
    coredns) build_coredns ;;
    crictl) build_crictl ;;
    local-path-provisioner) build_local_path_provisioner ;;
    *) echo "unknown tool: $t (known: kubernetes etcd helm opa nginx promtool spire containerd coredns crictl local-path-provisioner)" >&2; exit 2 ;;
  esac
done
