#!/usr/bin/env bash
# The Python venv for the SDK harness (issues #19, #21): target/sdk-venv with the pinned official
# OpenAI, Anthropic and MCP SDKs from requirements.txt. Idempotent: the venv is (re)built only when
# it is missing or requirements.txt changed since it was built (its SHA-256 is kept in the
# venv). Prints the venv's python path on stdout, and nothing else there.
#
# Usage: PY="$(server/tests/sdk/venv.sh)" && "$PY" server/tests/sdk/gateway.py openai-chat
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
REQUIREMENTS="$HERE/requirements.txt"
VENV="${AEGIS_SDK_VENV:-$ROOT/target/sdk-venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha256"

want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
current() { [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; }

if ! current; then
    mkdir -p "$(dirname "$VENV")"
    # Tests may call this concurrently: one builds, the others wait and reuse.
    exec 9>"$VENV.lock"
    flock 9
    if ! current; then
        rm -f "$STAMP"
        python3 -m venv --clear "$VENV" >&2
        "$PY" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQUIREMENTS" >&2
        "$PY" -c 'import openai, anthropic, mcp' >&2
        echo "$want" >"$STAMP"
    fi
    flock -u 9
fi
echo "$PY"
