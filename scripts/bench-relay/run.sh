#!/usr/bin/env bash
# pgbench figures behind BENCHMARKS.md "Resume anywhere: table or NOTIFY payloads": the relay's
# batch write and read against one NOTIFY per batch / per delta, and the asks-per-minute upsert.
# Uses a scratch database `relaybench` on $PGHOST (default 127.0.0.1), dropped at the end.
set -euo pipefail
cd "$(dirname "$0")"
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
DB="${PGDATABASE_URL:-postgres://root@127.0.0.1:5432}"
"$PG_BIN/psql" "$DB/postgres" -qc "DROP DATABASE IF EXISTS relaybench" -c "CREATE DATABASE relaybench"
"$PG_BIN/psql" "$DB/relaybench" -q <<'SQL'
CREATE UNLOGGED TABLE answer_streams (stream_id uuid PRIMARY KEY, user_id uuid NOT NULL, ask_id text NOT NULL, instance_id uuid NOT NULL, started_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz);
CREATE UNLOGGED TABLE answer_events (stream_id uuid NOT NULL REFERENCES answer_streams (stream_id) ON DELETE CASCADE, pos integer NOT NULL, event text NOT NULL, PRIMARY KEY (stream_id, pos));
CREATE UNLOGGED TABLE rate_logs (key text PRIMARY KEY, hits timestamptz[] NOT NULL);
INSERT INTO answer_streams (stream_id, user_id, ask_id, instance_id) SELECT md5(c::text)::uuid, gen_random_uuid(), 'a', gen_random_uuid() FROM generate_series(0, 16) c;
SQL
for c in 1 4; do
  for f in select1 batch8 notify8 notify_each asks read; do
    printf 'clients=%s %-12s ' "$c" "$f"
    "$PG_BIN/pgbench" -n -c "$c" -j "$c" -T 6 -M prepared -f "$f.sql" "$DB/relaybench" 2>&1 \
      | grep -E "latency average|tps =" | tr '\n' ' '
    echo
  done
done
"$PG_BIN/psql" "$DB/postgres" -qc "DROP DATABASE relaybench"
