# One command runs the service, one runs the tests; both set the machine up first
# (system packages, embedding model, PostgreSQL) through scripts/setup.sh.
.PHONY: run test lint eval eval-heldout bench

run:
	scripts/run.sh

test:
	scripts/test.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

eval:
	scripts/run.sh eval

# The held-out check: the Debian FAQ (unpacked from its Debian package), never used for tuning.
eval-heldout:
	scripts/debian-faq.sh
	scripts/run.sh eval --questions eval/debian-faq/questions.json

# chat-bench (bench/): the black-box load tool against a separate release server process,
# then the older in-process benchmarks. Figures: BENCHMARKS.md.
bench:
	bash -c 'source scripts/setup.sh && cargo build --release --workspace --bins && \
	  "$$CARGO_TARGET_DIR/release/chat-bench" --scenarios idle,streams,rest,login,history,retrieval,answers && \
	  cargo build --workspace --examples && $$CARGO_TARGET_DIR/debug/examples/load && $$CARGO_TARGET_DIR/debug/examples/flood'

# Fuzzes the API with schemathesis against its own OpenAPI description (scripts/fuzz.sh).
.PHONY: fuzz
fuzz:
	scripts/fuzz.sh
