# The two commands of the README: `make run` (the demo) and `make test`.
CARGO ?= cargo

.PHONY: run test build lint prereqs

prereqs:
	@scripts/prereqs.sh

build: prereqs
	$(CARGO) build --release --locked --bin switchyard

run: build
	scripts/demo.sh

test: prereqs
	$(CARGO) test --locked

lint: prereqs
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
