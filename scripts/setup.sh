#!/usr/bin/env bash
# Install everything the local stack and the tests need (idempotent): Python env, LiveKit server,
# PostgreSQL, livekit-client for the join page, and Chromium for the browser tests.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_python_env
ensure_livekit_server
ensure_postgres
ensure_node_modules
if [ "${1:-}" = "--with-browser" ]; then ensure_chromium; fi
