#!/usr/bin/env bash
# Keycloak, the token-exchange peer of bench/token.rs: org.keycloak:keycloak-quarkus-dist from Maven Central,
# pinned in tools/versions.env, checked against Maven Central's SHA-1 and unpacked into the tools cache
# (${AGENTIAM_TOOLS_CACHE:-~/.cache/agentiam-tools}/keycloak-<version>), then started on 127.0.0.1 with a data
# directory of the caller's. Nothing of Keycloak enters the clone.
#
# Usage:
#   tools/keycloak.sh install              unpack (once) and print the path of bin/kc.sh
#   tools/keycloak.sh start <dir> <port>   start on 127.0.0.1:<port> with its database and log in <dir>; waits
#                                          until the admin API answers; prints the PID; admin/admin (bootstrap)
#   tools/keycloak.sh stop <dir>           stop what `start <dir>` started
#
# Keycloak 26.7 needs Java 21 or newer: the Temurin 25 JDK under /usr/lib/jvm is used when the default java is
# older (KEYCLOAK_JAVA_HOME overrides). It runs in development mode (`start-dev`: H2 file database, local
# caches, HTTP), the single-node setup Keycloak documents for trying it out; see bench/README.md for what that
# means for the comparison.
set -euo pipefail

LOG_TAG=keycloak
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

version=$KEYCLOAK_VERSION
home=$AGENTIAM_TOOLS_CACHE/keycloak-$version
url=https://repo1.maven.org/maven2/org/keycloak/keycloak-quarkus-dist/$version/keycloak-quarkus-dist-$version.tar.gz

install() {
  if [ -x "$home/bin/kc.sh" ]; then
    echo "$home/bin/kc.sh"
    return
  fi
  local tmp=$AGENTIAM_TOOLS_CACHE/keycloak-$version.partial
  rm -rf "$tmp"
  mkdir -p "$tmp"
  log "downloading keycloak-quarkus-dist $version from Maven Central (about 170 MB, once)"
  curl -fsSL --retry 3 -o "$tmp/dist.tar.gz" "$url" || die "could not download $url"
  local want got
  want=$(curl -fsSL --retry 3 "$url.sha1" | cut -c1-40) || die "could not download $url.sha1"
  got=$(sha1sum "$tmp/dist.tar.gz" | cut -c1-40)
  [ "$want" = "$got" ] || die "SHA-1 of $url is $got, Maven Central says $want"
  tar -xzf "$tmp/dist.tar.gz" -C "$tmp"
  rm -f "$tmp/dist.tar.gz"
  [ -x "$tmp/keycloak-$version/bin/kc.sh" ] || die "the archive has no keycloak-$version/bin/kc.sh"
  rm -rf "$home"
  mv "$tmp/keycloak-$version" "$home"
  rm -rf "$tmp"
  echo "$home/bin/kc.sh"
}

java_home() {
  if [ -n "${KEYCLOAK_JAVA_HOME:-}" ]; then
    echo "$KEYCLOAK_JAVA_HOME"
    return
  fi
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/.*java.specification.version = \([0-9]*\).*/\1/p')
  if [ -n "$major" ] && [ "$major" -ge 21 ]; then
    dirname "$(dirname "$(readlink -f "$(command -v java)")")"
    return
  fi
  local j
  for j in /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/temurin-21-jdk-amd64 /usr/lib/jvm/java-21-openjdk-amd64; do
    if [ -x "$j/bin/java" ]; then
      echo "$j"
      return
    fi
  done
  die "Keycloak $version needs Java 21 or newer; set KEYCLOAK_JAVA_HOME"
}

start() {
  local dir=$1 port=$2
  local kc
  kc=$(install)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local jh
  jh=$(java_home)
  log "starting Keycloak $version on 127.0.0.1:$port (Java: $jh, data: $dir)"
  # The database lives in <dir> (not in the cache), so runs never see each other's realms.
  JAVA_HOME=$jh KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD=admin \
    setsid "$kc" start-dev --http-host=127.0.0.1 --http-port="$port" --http-management-port=$((port + 1)) \
    --db=dev-file --db-url="jdbc:h2:file:$dir/keycloakdb;NON_KEYWORDS=VALUE" \
    --log-level=warn >"$dir/keycloak.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/keycloak.pid"
  wait_started Keycloak "$pid" "$dir/keycloak.log" 240 \
    curl -fsS -o /dev/null "http://127.0.0.1:$port/realms/master/.well-known/openid-configuration"
  log "Keycloak answers on 127.0.0.1:$port"
  echo "$pid"
}

stop() {
  local dir=$1
  [ -f "$dir/keycloak.pid" ] || return 0
  local pid
  pid=$(cat "$dir/keycloak.pid")
  # setsid made the launcher script the leader of its own group: stop the script and the JVM together.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$dir/keycloak.pid"
}

case ${1:-} in
  install) install ;;
  start) [ $# = 3 ] || die "usage: $0 start <dir> <port>"; start "$2" "$3" ;;
  stop) [ $# = 2 ] || die "usage: $0 stop <dir>"; stop "$2" ;;
  *) die "usage: $0 install | start <dir> <port> | stop <dir>" ;;
esac
