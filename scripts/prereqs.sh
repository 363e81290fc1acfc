#!/usr/bin/env bash
# Checks what building switchyard needs beyond the Rust toolchain, and installs what is missing
# when it can (root with apt-get); otherwise prints the exact command and stops.
#   pingora-core builds zlib-ng with cmake and a C compiler; tikv-jemalloc-sys builds jemalloc
#   with the C compiler and make.
# Extra package names may be passed as arguments (the bench adds nginx, the tests redis-server).
set -euo pipefail

missing=()
command -v cargo >/dev/null || { echo "switchyard: cargo is not on PATH; install the Rust toolchain (https://rustup.rs) first" >&2; exit 1; }
command -v cmake >/dev/null || missing+=(cmake)
command -v cc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
for pkg in "$@"; do
  case "$pkg" in
    nginx|nginx-light) command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light) ;;
    *) command -v "$pkg" >/dev/null || missing+=("$pkg") ;;
  esac
done

# A build from scratch (tests, lints and the bench binaries, debug) takes about 3 GB in target/:
# say so up front rather than let the linker fail half-way with "No space left on device".
target=${CARGO_TARGET_DIR:-target}
free_mb=$( (df -Pm "$target" 2>/dev/null || df -Pm .) | awk 'NR == 2 { print $4 }')
if [ "${free_mb:-0}" -lt 3072 ]; then
  echo "switchyard: warning: only ${free_mb} MB free where $target lives; a build from scratch needs about 3 GB" >&2
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "switchyard: installing ${missing[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi

echo "switchyard: missing build prerequisites: ${missing[*]}" >&2
echo "install them with:" >&2
echo "    sudo apt-get install -y ${missing[*]}" >&2
exit 1
