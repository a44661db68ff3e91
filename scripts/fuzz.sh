#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis (PyPI, pinned below) against the running server's own
# /openapi.json, authenticated with a valid admin token: every documented route gets generated
# valid and invalid inputs, and schemathesis fails on any 5xx or any answer that contradicts the
# description (status codes, content types, response schemas).
#
# The server runs from the dev build on a free loopback port with its own fresh database, the
# offline providers and the test knowledge base; it is stopped (and the database dropped) at
# the end. Extra arguments go to `schemathesis run`, e.g. `scripts/fuzz.sh --max-examples 50`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

SCHEMATHESIS_VERSION=4.32.5
VENV="${FUZZ_VENV:-$HOME/.cache/support-chat/fuzz-venv}"
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  say "installing schemathesis $SCHEMATHESIS_VERSION into $VENV (once)"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build -q --workspace --bins
port=18000
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
db="sct_fuzz_$$"
fuzz_url="$(python3 - "$TEST_DATABASE_URL" "$db" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))
PY
)"
log="$(mktemp)"
DATABASE_URL="$fuzz_url" BIND_ADDR="127.0.0.1:$port" \
  JWT_SECRET="fuzz-secret-of-at-least-32-bytes-long" \
  KNOWLEDGE_BASE_DIR="$ROOT/server/tests/fixtures/kb" LLM_PROVIDER=offline EMBEDDING_PROVIDER=local \
  ADMIN_USERNAME=fuzzadmin ADMIN_PASSWORD="fuzz admin password" ASKS_PER_MINUTE=100000 \
  "$CARGO_TARGET_DIR/debug/chat-server" >"$log" 2>&1 &
server_pid=$!
cleanup() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  "$PG_BIN/psql" "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 240); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$log"; say "the server did not start"; exit 1; }
  sleep 0.5
done
token="$(curl -fsS -H 'content-type: application/json' \
  -d '{"username":"fuzzadmin","password":"fuzz admin password"}' "$base/api/login/" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access"])')"

say "fuzzing $base/openapi.json"
status=0
"$VENV/bin/schemathesis" run "$base/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --max-examples "${FUZZ_MAX_EXAMPLES:-30}" \
  --workers 2 \
  "$@" || status=$?
if grep -q '"level":"ERROR"\|ERROR' "$log"; then
  say "the server logged errors during the run (see $log)"
fi
exit "$status"
