#!/usr/bin/env bash
# Set everything up, then run the local stack in the foreground: PostgreSQL, the LiveKit server (--dev,
# loopback), the API with the join page, and the transcription agent. Ctrl-C stops everything it started.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
[ -f .env ] && { set -a; source .env; set +a; }

export LIVEKIT_URL="${LIVEKIT_URL:-ws://127.0.0.1:7880}"
export LIVEKIT_API_KEY="${LIVEKIT_API_KEY:-devkey}" LIVEKIT_API_SECRET="${LIVEKIT_API_SECRET:-secret}"
export API_HOST="${API_HOST:-127.0.0.1}" API_PORT="${API_PORT:-8080}"
export PUBLIC_SESSION_CREATION="${PUBLIC_SESSION_CREATION:-true}"
mkdir -p .run
pids=()
cleanup() {
    trap '' INT TERM  # a second Ctrl-C must not cut the clean-up short
    trap - EXIT
    log "stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

lk_port="${LIVEKIT_URL##*:}"; lk_port="${lk_port%%/*}"
write_livekit_config .run/livekit.yaml "$lk_port" "http://$API_HOST:$API_PORT/api/livekit/webhook"
"$LIVEKIT_SERVER" --dev --config .run/livekit.yaml >.run/livekit.log 2>&1 &
pids+=($!)
log "livekit-server on $LIVEKIT_URL (log: .run/livekit.log)"

"$PY" -m db migrate
"$PY" -m api &
pids+=($!)
"$PY" -m agent start &
pids+=($!)
if [ -n "${GLADIA_API_KEY:-}" ] && [ "${STT_ENGINE:-gladia}" = gladia ]; then engine=gladia; else engine="${STT_ENGINE:-local}"; fi
log "roomscribe: open http://$API_HOST:$API_PORT/ (speech engine: $engine). Ctrl-C stops everything."
wait -n "${pids[@]}"
