#!/usr/bin/env bash
# Makes the Python the tests use: a virtualenv under the tools cache with PyJWT, cryptography, Authlib,
# requests and the MCP Python SDK, pinned in
# tools/versions.env, so `make test` works on a fresh machine without touching the system Python (Debian's
# is "externally managed" and refuses `pip install`). Prints the interpreter's path on stdout; an existing
# environment is reused.
# Usage: AGENTIAM_PYTHON=$(tools/python-env.sh)
set -euo pipefail

LOG_TAG=python
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

venv=$AGENTIAM_TOOLS_CACHE/python-pyjwt-$PYJWT_VERSION-cryptography-$CRYPTOGRAPHY_VERSION-authlib-$AUTHLIB_VERSION-requests-$REQUESTS_VERSION-mcp-$MCP_VERSION
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import jwt, cryptography, authlib, requests, mcp' 2>/dev/null; then
  log "creating $venv with PyJWT $PYJWT_VERSION, cryptography $CRYPTOGRAPHY_VERSION, Authlib $AUTHLIB_VERSION, requests $REQUESTS_VERSION and mcp $MCP_VERSION"
  rm -rf "$venv.partial"
  python3 -m venv "$venv.partial" >&2 ||
    die "python3 -m venv failed; on Debian install it with: apt-get install python3-venv"
  "$venv.partial/bin/python" -m pip install --quiet --disable-pip-version-check \
    "pyjwt==$PYJWT_VERSION" "cryptography==$CRYPTOGRAPHY_VERSION" "authlib==$AUTHLIB_VERSION" \
    "requests==$REQUESTS_VERSION" "mcp==$MCP_VERSION" >&2
  rm -rf "$venv"
  mv "$venv.partial" "$venv"
fi
echo "$venv/bin/python"
