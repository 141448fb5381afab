#!/usr/bin/env bash
# Set everything up, then run the whole test suite against the real LiveKit server and PostgreSQL.
# Extra arguments go to pytest (e.g. `scripts/test.sh -k webhook`).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bash "$ROOT/scripts/setup.sh" --with-browser
cd "$ROOT"
export ROOMSCRIBE_LIVEKIT_SERVER="$LIVEKIT_SERVER"
exec "$VENV/bin/pytest" "$@"
