#!/usr/bin/env bash
# Times `chat-server import-django` on a generated Django database: USERS accounts and ROWS
# history rows (defaults 10 000 and 1 000 000, all within the retention window), imported into
# a fresh database. The figures are in BENCHMARKS.md.
#   usage: scripts/bench-import-django.sh [USERS] [ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
USERS="${1:-10000}"
ROWS="${2:-1000000}"
SRC=bench_django_source
DST=bench_django_target
BASE="${TEST_DATABASE_URL%/*}"
PSQL="$PG_BIN/psql"

"$PSQL" "$TEST_DATABASE_URL" -q \
  -c "DROP DATABASE IF EXISTS $SRC WITH (FORCE)" -c "DROP DATABASE IF EXISTS $DST WITH (FORCE)" \
  -c "CREATE DATABASE $SRC"
"$PSQL" "$BASE/$SRC" -q -f server/tests/fixtures/django/schema.sql
echo "generating $USERS Django users and $ROWS history rows" >&2
# Every user gets Django's own PBKDF2 test vector (the password "lètmein").
"$PSQL" "$BASE/$SRC" -q <<SQL
INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email,
                       is_staff, is_active, date_joined)
SELECT 'pbkdf2_sha256\$390000\$seasalt\$8xBlGd3jVgvJ+92hWPxi5ww0uuAuAnKgC45eudxro7c=', false,
       'user' || i, '', '', 'user' || i || '@example.com', i % 1000 = 0, true,
       now() - interval '400 days'
FROM generate_series(1, $USERS) AS i;
INSERT INTO chatbot_api_chathistory (user_message, ai_response, created_at, user_id)
SELECT 'Question ' || i || ': how long do refunds take for an order paid by gift card?',
       repeat('Refunds reach the original payment method within 5 business days. ', 4),
       now() - ((i::bigint * 7919) % (27 * 24 * 60)) * interval '1 minute',
       1 + i % $USERS
FROM generate_series(1, $ROWS) AS i;
ANALYZE;
SQL

cargo build -q --workspace --bins
BIN="${CARGO_TARGET_DIR:-target}/debug/chat-server"
TIME=()
[ -x /usr/bin/time ] && TIME=(/usr/bin/time -f 'wall %e s, max RSS %M KiB')
for pass in first second; do
  echo "--- $pass import" >&2
  "${TIME[@]}" env DATABASE_URL="$BASE/$DST" "$BIN" import-django --from "$BASE/$SRC"
done
"$PSQL" "$TEST_DATABASE_URL" -q -c "DROP DATABASE IF EXISTS $SRC WITH (FORCE)" -c "DROP DATABASE IF EXISTS $DST WITH (FORCE)"
