# The two commands of the README: `make run` (the demo) and `make test`.
CARGO ?= cargo

.PHONY: run test build lint prereqs bench bench-smoke soak flood

prereqs:
	@scripts/prereqs.sh

build: prereqs
	$(CARGO) build --release --locked --bin switchyard

run: build
	scripts/demo.sh

# The tests start real redis-server processes (budgets, cache): installed here when missing.
test:
	@scripts/prereqs.sh redis-server
	$(CARGO) test --locked

lint: prereqs
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# Benchmarks (issue 4): the side-by-side suite (direct vs nginx vs switchyard, about 10 min on
# 2 cores) rewrites BENCHMARKS.md and benches/results/; bench-smoke is its few-second check.
# nginx, the floor every scenario compares against, is installed when missing.
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

bench:
	@scripts/prereqs.sh nginx
	$(CARGO) build --release --locked --bins
	$(TARGET_DIR)/release/switchyard-bench suite

bench-smoke:
	@scripts/prereqs.sh nginx
	$(CARGO) build --locked --bins
	$(TARGET_DIR)/debug/switchyard-bench smoke

# The soak (issue 13): SOAK_MINUTES (default 10) of mixed plain, streaming, erroring and slow
# traffic with policy swaps every 3 s against the release gateway and sims, sampling the
# gateway's RSS and open fds; stops by itself, fails on any mishandled request. Not part of
# `make test`: it takes minutes.
SOAK_MINUTES ?= 10

soak:
	$(CARGO) build --release --locked --bins
	$(TARGET_DIR)/release/switchyard-bench soak --minutes $(SOAK_MINUTES)

# Floods (issue 13): FLOOD_CONNECTIONS (default 20000) slow connections, twice, against the
# release gateway, reading its RSS and open fds before, at the peak and after each flood, while
# a probe checks that the admin listener and normal requests still answer. Loopback only; stops
# by itself. Not part of `make test`.
FLOOD_CONNECTIONS ?= 20000

flood:
	$(CARGO) build --release --locked --bins
	$(TARGET_DIR)/release/switchyard-bench flood --connections $(FLOOD_CONNECTIONS)
