#!/usr/bin/env bash
# Sets the machine up (see setup.sh) and runs the server. Extra arguments go to chat-server,
# e.g. `scripts/run.sh --bind-addr 0.0.0.0:8000` or `scripts/run.sh eval`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec cargo run -p server --bin chat-server -- "$@"
