# Shared, idempotent setup steps for the local stack. Sourced by the other scripts; every function may be
# called on a fresh machine or on one where everything is already in place.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
LIVEKIT_VERSION="v1.13.5"
LIVEKIT_BIN_DIR="$ROOT/.tools/livekit-server-$LIVEKIT_VERSION"
LIVEKIT_SERVER="$LIVEKIT_BIN_DIR/server"
export DATABASE_URL="${DATABASE_URL:-postgresql://roomscribe:roomscribe@127.0.0.1:5432/roomscribe}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    # apt-get update once per run, and only when something is missing.
    if [ -z "${_APT_UPDATED:-}" ]; then as_root apt-get update -q >/dev/null; _APT_UPDATED=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

ensure_python_env() {
    local stamp="$VENV/.roomscribe-installed" want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
    log "python: installing roomscribe and its dependencies into .venv"
    [ -x "$PY" ] || python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -e "$ROOT[dev,bench]"
    echo "$want" >"$stamp"
}

ensure_livekit_server() {
    if [ -x "$LIVEKIT_SERVER" ]; then return; fi
    command -v go >/dev/null || { log "go is required to build the LiveKit server"; exit 1; }
    log "livekit: building livekit-server $LIVEKIT_VERSION with go install (first time only)"
    local started=$SECONDS
    GOTOOLCHAIN=local GOBIN="$LIVEKIT_BIN_DIR" CGO_ENABLED=0 \
        go install "github.com/livekit/livekit-server/cmd/server@$LIVEKIT_VERSION"
    log "livekit: built in $((SECONDS - started)) s"
}

ensure_postgres() {
    # Use the server at DATABASE_URL when one answers; otherwise install and start Debian's PostgreSQL and
    # create the role and database named in DATABASE_URL.
    if command -v psql >/dev/null && psql "$DATABASE_URL" -qAtc 'select 1' >/dev/null 2>&1; then return; fi
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        log "postgres: installing Debian's postgresql"
        apt_install postgresql
    fi
    local version cluster_line
    version="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
    cluster_line="$(pg_lsclusters -h | awk -v v="$version" '$1 == v {print; exit}')"
    if [ -z "$cluster_line" ]; then
        as_root pg_createcluster "$version" main >/dev/null
    fi
    if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $4 == "online" {found=1} END {exit !found}'; then
        log "postgres: starting cluster $version/main"
        as_root pg_ctlcluster "$version" main start
    fi
    local user password dbname
    read -r user password dbname < <("$PY" - "$DATABASE_URL" <<'PYEOF'
import sys
from urllib.parse import urlsplit, unquote
url = urlsplit(sys.argv[1])
print(unquote(url.username or "roomscribe"), unquote(url.password or "roomscribe"), url.path.lstrip("/") or "roomscribe")
PYEOF
)
    as_root runuser -u postgres -- psql -qAt -v ON_ERROR_STOP=1 \
        -v user="$user" -v password="$password" -v dbname="$dbname" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'user', :'password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'dbname', :'user')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'dbname') \gexec
SQL
    psql "$DATABASE_URL" -qAtc 'select 1' >/dev/null || { log "postgres: $DATABASE_URL does not answer"; exit 1; }
}

ensure_node_modules() {
    [ -f "$ROOT/package.json" ] || return 0
    if [ -d "$ROOT/node_modules/livekit-client" ] && [ "$ROOT/node_modules" -nt "$ROOT/package-lock.json" ]; then
        return
    fi
    log "web: installing livekit-client from the npm registry"
    (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$ROOT/node_modules"
}

ensure_chromium() {
    command -v chromium >/dev/null && return
    log "browser: installing Debian's chromium"
    apt_install chromium
}

# Write a LiveKit server config: loopback only, dev keys, webhooks to the API.
write_livekit_config() {
    local path="$1" port="$2" webhook_url="$3" key="${LIVEKIT_API_KEY:-devkey}" secret="${LIVEKIT_API_SECRET:-secret}"
    cat >"$path" <<YAML
port: $port
bind_addresses: ["127.0.0.1"]
rtc:
  tcp_port: $((port + 1))
  udp_port: $((port + 2))
  use_external_ip: false
  node_ip: 127.0.0.1
keys:
  $key: $secret
webhook:
  api_key: $key
  urls: ["$webhook_url"]
room:
  empty_timeout: 300
  departure_timeout: 20
logging:
  level: info
YAML
}
