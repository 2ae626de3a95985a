#!/usr/bin/env bash
# SPIRE, the peer of the kill-switch bench (bench/revocation.rs): spire-server and spire-agent built from the Go
# module proxy by tools/build-tools.sh (pinned in tools/versions.env, cached outside the clone), started on
# 127.0.0.1 with a directory of the caller's. Nothing of SPIRE enters the clone.
#
# Usage:
#   tools/spire.sh install              build (once) and print the directory holding spire-server and spire-agent
#   tools/spire.sh start <dir> <port>   a server on 127.0.0.1:<port> (sqlite datastore, join_token node
#                                       attestation, in-memory keys) and one agent attested by a join token
#                                       (unix workload attestor); its Workload API is <dir>/agent.sock, the
#                                       server's admin API <dir>/server.sock; waits until both are healthy
#   tools/spire.sh stop <dir>           stop what `start <dir>` started
#
# Trust domain bench.test; the agent's alias is spiffe://bench.test/node, the parent of the bench's entries.
# SPIRE's defaults stand (JWT-SVIDs live 5 minutes, X.509-SVIDs 1 hour); SPIRE_JWT_SVID_TTL (a Go duration)
# overrides the JWT one for quick local runs, and the bench reports the TTL it saw. Unix socket paths are
# limited to 107 bytes: keep <dir> short.
set -euo pipefail

LOG_TAG=spire
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

bin=$AGENTIAM_TOOLS_CACHE/spire-$SPIRE_VERSION

install() {
  if [ ! -x "$bin/spire-server" ] || [ ! -x "$bin/spire-agent" ]; then
    log "building SPIRE $SPIRE_VERSION from the Go module proxy (once; about 10 minutes on 2 cores)"
    "$AGENTIAM_ROOT/tools/build-tools.sh" spire
  fi
  echo "$bin"
}

start() {
  local dir=$1 port=$2
  install >/dev/null
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ ${#dir} -le 90 ] || die "$dir is too long for the Unix sockets SPIRE puts in it (keep it under 90 bytes)"
  stop "$dir"
  rm -rf "$dir/server-data" "$dir/agent-data" "$dir"/*.sock
  local ttl=""
  [ -z "${SPIRE_JWT_SVID_TTL:-}" ] || ttl="default_jwt_svid_ttl = \"$SPIRE_JWT_SVID_TTL\""
  cat >"$dir/server.conf" <<EOF
server {
    bind_address = "127.0.0.1"
    bind_port = "$port"
    socket_path = "$dir/server.sock"
    trust_domain = "bench.test"
    data_dir = "$dir/server-data"
    log_level = "WARN"
    $ttl
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "$dir/server-data/datastore.sqlite3"
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
EOF
  cat >"$dir/agent.conf" <<EOF
agent {
    data_dir = "$dir/agent-data"
    log_level = "WARN"
    server_address = "127.0.0.1"
    server_port = "$port"
    socket_path = "$dir/agent.sock"
    trust_domain = "bench.test"
    # The server's CA is made at its first start, so there is no bundle to pin yet: the agent trusts the
    # first answer of a server on loopback (SPIRE's own quick-start does the same).
    insecure_bootstrap = true
}
plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
EOF
  log "starting spire-server $SPIRE_VERSION on 127.0.0.1:$port (dir: $dir)"
  setsid "$bin/spire-server" run -config "$dir/server.conf" >"$dir/server.log" 2>&1 &
  echo $! >"$dir/server.pid"
  wait_started spire-server "$(cat "$dir/server.pid")" "$dir/server.log" 60 \
    "$bin/spire-server" healthcheck -socketPath "$dir/server.sock"
  local token
  token=$("$bin/spire-server" token generate -socketPath "$dir/server.sock" -spiffeID spiffe://bench.test/node |
    sed -n 's/^Token: *//p')
  [ -n "$token" ] || die "spire-server token generate printed no token"
  setsid "$bin/spire-agent" run -config "$dir/agent.conf" -joinToken "$token" >"$dir/agent.log" 2>&1 &
  echo $! >"$dir/agent.pid"
  wait_started spire-agent "$(cat "$dir/agent.pid")" "$dir/agent.log" 60 \
    "$bin/spire-agent" healthcheck -socketPath "$dir/agent.sock"
  log "spire-server and spire-agent are healthy"
}

stop() {
  local dir=$1 p pid
  for p in agent server; do
    [ -f "$dir/$p.pid" ] || continue
    pid=$(cat "$dir/$p.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$dir/$p.pid"
  done
}

case ${1:-} in
  install) install ;;
  start) [ $# = 3 ] || die "usage: $0 start <dir> <port>"; start "$2" "$3" ;;
  stop) [ $# = 2 ] || die "usage: $0 stop <dir>"; stop "$2" ;;
  *) die "usage: $0 install | start <dir> <port> | stop <dir>" ;;
esac
