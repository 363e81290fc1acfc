# Benchmarks (issue 4): `make bench` runs the full side-by-side suite and
# rewrites BENCHMARKS.md and benches/results/; `make bench-smoke` is the
# few-second CI check of the harness. Other targets live in the main Makefile.
CARGO ?= cargo
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
NGINX_INSTALL = apt-get install -y --no-install-recommends nginx

.PHONY: bench bench-smoke

# nginx is the floor every scenario compares against: installed when missing.
bench:
	@if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && $(NGINX_INSTALL); \
	  else echo "nginx is missing; install it with: sudo $(NGINX_INSTALL)"; exit 1; fi; \
	fi
	$(CARGO) build --release --locked --bins
	$(TARGET_DIR)/release/switchyard-bench suite

bench-smoke:
	$(CARGO) build --locked --bins
	$(TARGET_DIR)/debug/switchyard-bench smoke
