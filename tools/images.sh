#!/usr/bin/env bash
# OCI images for the local node, without Docker: assembled from our own binaries and Debian packages (the way
# distroless is), with umoci, into OCI archives in the tools cache, and imported into the node's containerd.
# Pods use them with imagePullPolicy: Never; nothing is pulled from a registry.
#
#   agentiam.local/agentiam:dev-<sha>   the operator (target/release/agentiam, libc6, libgcc-s1, CA bundle,
#                                       user nonroot 65532); the layout the Dockerfile builds for registries
#   agentiam.local/pause:<sha>          the pod sandbox (tools/images/pause.c, static)
#   agentiam.local/agent-python:<sha>   test agents: Debian's python3.11 and busybox (sh and the usual tools)
#   agentiam.local/busybox:<sha>        Debian's busybox-static alone (the volume provisioner's helper pods)
#
# Tags are content hashes of what went in, so a rebuilt binary is a new tag (a `helm upgrade` to it rolls the
# Deployment) and an unchanged one is not rebuilt.
#
# Usage: tools/images.sh build <image>    prints the archive path on stdout
#        tools/images.sh ref <image>      prints the image reference (builds if needed)
#        tools/images.sh import <image>   builds if needed, imports into the node, prints the reference
#        (<image>: operator, pause, agent-python or busybox)
#        tools/images.sh check-dockerfile   checks that the Dockerfile builds the operator image's layout
#                                           (`make lint` runs it; nothing here can run Docker)
set -euo pipefail

LOG_TAG=images
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

images=$AGENTIAM_TOOLS_CACHE/images
debs=$AGENTIAM_TOOLS_CACHE/debs
state=${AGENTIAM_CLUSTER_DIR:-$AGENTIAM_ROOT/.local/cluster}
mkdir -p "$images" "$debs"

# The operator image's user and entrypoint; the Dockerfile must use the same (check-dockerfile).
OPERATOR_USER=65532:65532
OPERATOR_ENTRYPOINT=/usr/local/bin/agentiam

usage() { echo "usage: $0 build|ref|import operator|pause|agent-python|busybox, or $0 check-dockerfile" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------------------------
# Debian packages: the archive's candidate version, the only one it is sure to still serve (a security update
# removes the version before it). For libc that is also the right one: the operator was linked against the
# host's installed libc, and the candidate is never older than what is installed.

# apt-cache takes most of a second per call: one call answers for every package an image needs.
declare -A deb_versions=()
deb_versions_load() { # deb_versions_load <package>...
  local pkg ver
  while read -r pkg ver; do deb_versions[${pkg%:}]=$ver; done < <(apt-cache policy "$@" 2>/dev/null |
    awk '/^[^ ]/ { p = $1 } /Candidate:/ { print p, $2 }')
}

deb_version() { # deb_version <package>
  [ -n "${deb_versions[$1]:-}" ] || deb_versions_load "$1"
  local v=${deb_versions[$1]:-}
  [ -n "$v" ] && [ "$v" != "(none)" ] || die "Debian package $1 is not known to apt (run apt-get update as root)"
  echo "$v"
}

deb_file() { # deb_file <package> <version>: the .deb in the cache, downloaded once
  local pkg=$1 ver=$2 f
  f=$debs/${pkg}_${ver//:/%3a}_amd64.deb
  if [ ! -f "$f" ]; then
    f=$debs/${pkg}_${ver//:/%3a}_all.deb
  fi
  if [ ! -f "$f" ]; then
    log "downloading $pkg $ver"
    (cd "$debs" && apt-get download -qq "$pkg=$ver" >/dev/null 2>&1) ||
      die "apt-get download $pkg=$ver failed (as root: apt-get update)"
    f=$(ls "$debs/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1)
    [ -n "$f" ] || die "apt-get download $pkg=$ver left no .deb in $debs"
  fi
  echo "$f"
}

extract_debs() { # extract_debs <rootfs> <package>...
  local root=$1 pkg ver f; shift
  for pkg in "$@"; do
    ver=$(deb_version "$pkg")
    f=$(deb_file "$pkg" "$ver")
    dpkg-deb -x "$f" "$root"
  done
  # Documentation, manuals and translations are dead weight in an image.
  rm -rf "$root"/usr/share/{doc,man,info,lintian,locale,bug}
}

# The users and files every image has: root, nonroot (65532, distroless' numbering), a world-writable /tmp.
base_files() { # base_files <rootfs>
  local root=$1
  mkdir -p "$root"/{etc,tmp,home/nonroot}
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
}

# Mozilla's CA set as Debian ships it, concatenated the way update-ca-certificates does.
ca_bundle() { # ca_bundle <rootfs>
  local root=$1 tmp ver f
  ver=$(deb_version ca-certificates)
  f=$(deb_file ca-certificates "$ver")
  tmp=$(mktemp -d)
  dpkg-deb -x "$f" "$tmp"
  mkdir -p "$root/etc/ssl/certs"
  find "$tmp/usr/share/ca-certificates" -name '*.crt' | sort | xargs cat >"$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$tmp"
}

# ---------------------------------------------------------------------------------------------------------------
# OCI archives with umoci: one layer holding <rootfs>, the config's entrypoint, user and environment.

oci_archive() { # oci_archive <out.tar> <rootfs> <user> <entrypoint>...
  local out=$1 root=$2 user=$3; shift 3
  local work; work=$(mktemp -d)
  local layout=$work/layout args=() e
  umoci init --layout "$layout"
  umoci new --image "$layout:image"
  umoci unpack --image "$layout:image" "$work/bundle" >/dev/null
  cp -a "$root/." "$work/bundle/rootfs/"
  umoci repack --image "$layout:image" "$work/bundle" >/dev/null
  for e in "$@"; do args+=(--config.entrypoint "$e"); done
  umoci config --image "$layout:image" --os linux --architecture amd64 --config.user "$user" \
    --config.workingdir / --config.env PATH=/usr/local/bin:/usr/bin:/bin "${args[@]}"
  umoci gc --layout "$layout"
  tar -C "$layout" -cf "$out.partial" .
  mv "$out.partial" "$out"
  rm -rf "$work"
}

sha_of() { sha256sum | cut -c1-12; }

# Each image: a key (content hash of its inputs) and a builder into <rootfs>.
image_key() {
  case $1 in
    operator)
      [ -x "$AGENTIAM_ROOT/target/release/agentiam" ] ||
        die "target/release/agentiam is missing: cargo build --release --locked --bin agentiam"
      { sha256sum <"$AGENTIAM_ROOT/target/release/agentiam"; deb_version libc6; deb_version libgcc-s1
        deb_version ca-certificates; sha256sum <"$0"; } | sha_of ;;
    pause) { sha256sum <"$AGENTIAM_ROOT/tools/images/pause.c"; sha256sum <"$0"; gcc --version | head -n1; } | sha_of ;;
    agent-python) { for p in "${python_packages[@]}" busybox-static; do echo "$p $(deb_version "$p")"; done
      sha256sum <"$0"; } | sha_of ;;
    busybox) { echo "busybox-static $(deb_version busybox-static)"; sha256sum <"$0"; } | sha_of ;;
    *) usage ;;
  esac
}

image_name() {
  case $1 in
    operator) echo agentiam.local/agentiam ;;
    pause) echo agentiam.local/pause ;;
    agent-python) echo agentiam.local/agent-python ;;
    busybox) echo agentiam.local/busybox ;;
  esac
}

image_tag() {
  case $1 in
    operator) echo "dev-$(image_key operator)" ;;
    *) image_key "$1" ;;
  esac
}

# python3.11 and what it needs at run time (apt-cache depends --recurse --important), less what only
# packaging and perl need.
python_packages=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib media-types gcc-12-base libacl1
  libbz2-1.0 libc6 libcom-err2 libcrypt1 libexpat1 libffi8 libgcc-s1 libgdbm6 libgssapi-krb5-2 libk5crypto3
  libkeyutils1 libkrb5-3 libkrb5support0 liblzma5 libmd0 libncursesw6 libnsl2 libpcre2-8-0 libreadline8
  libselinux1 libsqlite3-0 libssl3 libtinfo6 libtirpc-common libtirpc3 libuuid1 libzstd1 readline-common zlib1g
  libdb5.3)

# busybox's applets as symlinks (what `busybox --install -s` would make, without running it in the image).
busybox_links() { # busybox_links <rootfs>
  local root=$1 a
  for a in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$a" ] || [ -e "$root/usr/bin/$a" ] || ln -s busybox "$root/bin/$a"
  done
}

build_rootfs() { # build_rootfs <image> <rootfs> <spec file>: writes the user and entrypoint words, one per line
  local root=$2 spec=$3
  base_files "$root"
  case $1 in
    operator)
      extract_debs "$root" libc6 libgcc-s1
      # iconv's modules: the operator converts no character sets.
      rm -rf "$root"/usr/lib/x86_64-linux-gnu/gconv
      ca_bundle "$root"
      install -D -m 0755 "$AGENTIAM_ROOT/target/release/agentiam" "$root$OPERATOR_ENTRYPOINT"
      printf '%s\n' "$OPERATOR_USER" "$OPERATOR_ENTRYPOINT" >"$spec" ;;
    pause)
      gcc -Os -static -Wall -Wextra -Werror -o "$root/pause" "$AGENTIAM_ROOT/tools/images/pause.c"
      strip "$root/pause"
      printf '%s\n' 65535:65535 /pause >"$spec" ;;
    agent-python)
      extract_debs "$root" "${python_packages[@]}" busybox-static
      ca_bundle "$root"
      ln -sf python3.11 "$root/usr/bin/python3"
      busybox_links "$root"
      printf '%s\n' 65532:65532 >"$spec" ;;
    busybox)
      extract_debs "$root" busybox-static
      busybox_links "$root"
      printf '%s\n' 0:0 >"$spec" ;;
  esac
}

cmd_build() { # prints the archive path
  local img=$1 tag out root
  tag=$(image_tag "$img")
  out=$images/$img-$tag.tar
  if [ -f "$out" ]; then echo "$out"; return; fi
  local t=$EPOCHREALTIME
  command -v umoci >/dev/null || die "umoci is missing (as root: apt-get install umoci; tools/node.sh installs it)"
  root=$(mktemp -d)
  build_rootfs "$img" "$root/rootfs" "$root/spec"
  local spec; mapfile -t spec <"$root/spec"
  oci_archive "$out" "$root/rootfs" "${spec[@]}"
  rm -rf "$root"
  log "built $(image_name "$img"):$tag ($(du -h "$out" | cut -f1), $(elapsed "$t")s): $out"
  echo "$out"
}

cmd_import() {
  local img=$1 archive ref sock=$NODE_CRI_SOCKET
  archive=$(cmd_build "$img")
  ref=$(image_name "$img"):$(image_tag "$img")
  [ -S "$sock" ] || die "the node's containerd is not running ($sock); tools/cluster.sh up starts it"
  local ctr="$AGENTIAM_TOOLS_CACHE/containerd-$CONTAINERD_VERSION/ctr"
  # ctr warns about cgroup v1 on every call (this machine's cgroups); the warning says nothing about images.
  ctr() { "$ctr" "$@" 2> >(grep -v 'DEPRECATION: The support for cgroup v1' >&2); }
  if ctr -a "$sock" -n k8s.io images ls -q | grep -qxF "$ref"; then
    log "$ref already in the node's containerd"
  else
    # --index-name keeps the archive's index under the reference; --all-platforms: the archive has one.
    ctr -a "$sock" -n k8s.io images import --index-name "$ref" --all-platforms "$archive" >/dev/null
    log "imported $ref into the node's containerd"
  fi
  echo "$ref"
}

# The Dockerfile cannot be built here, so its layout is checked against the one assembled above: the same
# entrypoint path and user, the binary copied there, distroless/cc of the Debian release whose packages
# go into the image, and a Rust no older than the crate's rust-version.
cmd_check_dockerfile() {
  local df=$AGENTIAM_ROOT/Dockerfile bad=0 line
  check() { # check <what> <grep -E pattern>
    if ! grep -Eq "$2" "$df"; then log "Dockerfile: expected $1 (pattern: $2)"; bad=1; fi
  }
  local entry=${OPERATOR_ENTRYPOINT//./\\.}
  check "the entrypoint $OPERATOR_ENTRYPOINT" "^ENTRYPOINT \[\"$entry\"\]\$"
  check "the user $OPERATOR_USER" "^USER $OPERATOR_USER\$"
  check "the release binary copied to $OPERATOR_ENTRYPOINT" "^COPY --from=build /src/target/release/agentiam $entry\$"
  local debian codename
  debian=$( (. /etc/os-release && [ "${ID:-}" = debian ] && echo "${VERSION_ID:-}") || true)
  codename=$( (. /etc/os-release && echo "${VERSION_CODENAME:-}") || true)
  if [ -n "$debian" ]; then
    check "distroless/cc of Debian $debian (the images take this machine's Debian packages)" \
      "^FROM gcr\.io/distroless/cc-debian$debian:nonroot\$"
    check "a build stage on Debian $codename" "^FROM docker\.io/library/rust:[0-9.]+-$codename AS build\$"
  else
    log "Dockerfile: not a Debian machine, the base image's release is not compared"
  fi
  local want have
  want=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$AGENTIAM_ROOT/Cargo.toml")
  line=$(grep -E '^FROM docker\.io/library/rust:' "$df" || true)
  have=$(sed -E 's/^FROM docker\.io\/library\/rust:([0-9.]+)-.*/\1/' <<<"$line")
  if [ -z "$have" ] || [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -1)" != "$want" ]; then
    log "Dockerfile: the build stage's Rust ($have) is older than the crate's rust-version $want"; bad=1
  fi
  [ $bad = 0 ] || die "the Dockerfile no longer builds the layout of tools/images.sh (above)"
  log "the Dockerfile builds the operator image's layout ($OPERATOR_USER, $OPERATOR_ENTRYPOINT)"
}

[ "${1:-}" = check-dockerfile ] && [ $# = 1 ] && { cmd_check_dockerfile; exit; }
[ $# = 2 ] || usage
deb_versions_load libc6 libgcc-s1 ca-certificates busybox-static "${python_packages[@]}"
case $1 in
  build) cmd_build "$2" ;;
  ref) cmd_build "$2" >/dev/null; echo "$(image_name "$2"):$(image_tag "$2")" ;;
  import) cmd_import "$2" ;;
  *) usage ;;
esac
