#!/usr/bin/env bash
# Sets the machine up (see setup.sh) and runs every test against the real PostgreSQL.
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh --test api accounts::`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# Each test creates a database named sct_<uuid>; drop what earlier runs left behind.
"$PG_BIN/psql" "$TEST_DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'sct\_%'" |
  while read -r db; do "$PG_BIN/psql" "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true; done
cargo test --workspace "$@"
