#!/usr/bin/env bash
# Sets the machine up (see setup.sh) and runs the server. Extra arguments go to chat-server,
# e.g. `scripts/run.sh --bind-addr 0.0.0.0:8000` or `scripts/run.sh eval`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# Built as part of the whole workspace, as `make test` builds it: the console's dependencies switch
# on features of crates the server shares (tokio-tungstenite's TLS, mio, rustix, time), and a
# server-only build would compile about 30 crates again after `make test` (and back).
cargo build --workspace --bins
exec "$CARGO_TARGET_DIR/debug/chat-server" "$@"
