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

bench:
	bash -c 'source scripts/setup.sh && cargo run -p server --example load && cargo run -p server --example flood'

# Fuzzes the API with schemathesis against its own OpenAPI description (scripts/fuzz.sh).
.PHONY: fuzz
fuzz:
	scripts/fuzz.sh
