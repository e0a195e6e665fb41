#!/usr/bin/env bash
# Schema-driven fuzzing of the JSON API with a pinned Schemathesis (issue #16, item 25).
#
# Starts the debug `aegis` binary (built by `cargo build -p server`) on a fresh temporary
# data directory and a free loopback port, registers a throw-away sponsor and agent for
# tokens, and runs Schemathesis over every operation of `GET /api/openapi.json` that needs
# no upstream, with the checks not_a_server_error, status_code_conformance,
# content_type_conformance, response_schema_conformance and negative_data_rejection.
# Exits non-zero on any finding. Bounded: AEGIS_ST_MAX_TIME seconds (default 150).
#
# Excluded operations, and why:
#   POST /api/proxy/execute, /api/gw/...      they call an upstream
#   POST /api/auth/logout,                    they end the fuzzer's own session, after which
#   DELETE /api/auth/sessions/{id}            every sponsor call is a (documented) 401
#   GET /ws                                   a WebSocket upgrade, not a request/response
#
# Usage: server/tests/schemathesis/run.sh   (from anywhere; `make test-schema` runs it)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
SCHEMATHESIS_VERSION="4.32.5"
VENV="$ROOT/target/venv"
BIN="${AEGIS_BIN:-$ROOT/target/debug/aegis}"
MAX_TIME="${AEGIS_ST_MAX_TIME:-150}"

if [[ ! -x "$VENV/bin/st" ]] || ! "$VENV/bin/st" --version | grep -q "$SCHEMATHESIS_VERSION"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
[[ -x "$BIN" ]] || (cd "$ROOT" && cargo build -p server --bin aegis)

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# A clean environment: no .env, no database or Redis from the caller's shell.
(
    cd "$WORK"
    exec env -i PATH="$PATH" HOME="$WORK" \
        LEPTOS_SITE_ADDR="127.0.0.1:$PORT" \
        AEGIS_DATA_DIR="$WORK/data" \
        AEGIS_MASTER_KEY_FILE="$WORK/master.key" \
        AEGIS_LOGIN_MAX_PER_IP=100000 \
        AEGIS_LOG_FORMAT=text RUST_LOG=warn \
        "$BIN" serve
) >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 200); do
    curl -fsS "$BASE/healthz" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; echo "aegis did not start" >&2; exit 1; }
    sleep 0.1
done

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
SPONSOR_TOKEN="$(curl -fsS -X POST "$BASE/api/auth/register" -H 'content-type: application/json' \
    -d '{"email":"fuzz@example.com","password":"Fuzzing-Pass-123","name":"Fuzz"}' | json_field "['access_token']")"
AGENT_KEY="$(curl -fsS -X POST "$BASE/api/agents" -H 'content-type: application/json' \
    -H "authorization: Bearer $SPONSOR_TOKEN" -d '{"name":"fuzz-agent"}' | json_field "['api_key']")"
export AEGIS_ST_SPONSOR_TOKEN="$SPONSOR_TOKEN" AEGIS_ST_AGENT_KEY="$AGENT_KEY"

# One worker: Hypothesis's lambda descriptions parse source with `ast`, which races
# across threads on CPython 3.11 ("AST constructor recursion depth mismatch").
status=0
cd "$WORK" # Schemathesis keeps its cache in the working directory.
"$VENV/bin/st" --config-file "$HERE/schemathesis.toml" run "$BASE/api/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
    --exclude-path-regex '^(/api/proxy/execute$|/api/gw/|/api/auth/logout$|/api/auth/sessions/|/ws$)' \
    --max-time "$MAX_TIME" \
    --workers 1 \
    --seed "${AEGIS_ST_SEED:-1}" \
    --request-timeout 20 \
    --suppress-health-check all \
    --report junit --report-dir "$ROOT/target/schemathesis" \
    || status=$?

if grep -q "panicked" "$WORK/server.log"; then
    echo "aegis panicked during fuzzing:" >&2
    grep -A5 "panicked" "$WORK/server.log" >&2
    status=1
fi
exit "$status"
