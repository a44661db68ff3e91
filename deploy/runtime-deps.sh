#!/bin/sh
# The runtime image's system packages, one place for the Dockerfile and for checking them on a
# Debian machine without Docker (`sh deploy/runtime-deps.sh --check` lists what is missing;
# without arguments it installs them, as the Dockerfile's runtime stage does).
#   libopenblas0-pthread, liblapack3: BLAS/LAPACK that the statically built FAISS links to
#   libgomp1: OpenMP runtime used by FAISS
#   libstdc++6, libgcc-s1: the C++ runtime of FAISS (already in debian slim, listed for clarity)
#   ca-certificates: the system roots, for Gemini / OpenAI-compatible endpoints and sslmode=verify-*
#   curl: the container health checks (GET /healthz, /readyz)
set -eu
PACKAGES="libopenblas0-pthread liblapack3 libgomp1 libstdc++6 libgcc-s1 ca-certificates curl"
if [ "${1:-}" = "--check" ]; then
  missing=""
  for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then echo "missing:$missing"; exit 1; fi
  echo "all runtime packages present: $PACKAGES"
  exit 0
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES
rm -rf /var/lib/apt/lists/*
