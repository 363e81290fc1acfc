#!/usr/bin/env bash
# `make run`: three simulated model servers and the gateway on routes/demo.toml.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${SWITCHYARD_BIN:-target/release/switchyard}
policy=${SWITCHYARD_POLICY:-routes/demo.toml}
export SWITCHYARD_ADMIN_TOKEN=${SWITCHYARD_ADMIN_TOKEN:-demo-token}
export RUST_LOG=${RUST_LOG:-info,pingora_core=warn,pingora_proxy=warn}

for port in 8080 9090 9101 9102 9103; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "switchyard demo: port $port is already in use; stop whatever listens there first" >&2
    exit 1
  fi
done

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping the demo"
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$bin" sim --listen 127.0.0.1:9101 --model llama-3.1-70b-instruct --name sim-70b-v1 \
  --ttft-ms 120 --prefill-us-per-token 40 --tpot-ms 25 --threads 1 & pids+=($!)
"$bin" sim --listen 127.0.0.1:9102 --model llama-3.1-70b-instruct --name sim-70b-v2 \
  --ttft-ms 90 --prefill-us-per-token 30 --tpot-ms 20 --threads 1 & pids+=($!)
"$bin" sim --listen 127.0.0.1:9103 --model llama-3.1-8b-instruct --name sim-8b \
  --ttft-ms 30 --prefill-us-per-token 5 --tpot-ms 8 --threads 1 & pids+=($!)
"$bin" serve --config "$policy" & pids+=($!)

for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break
  sleep 0.1
done

cat <<TXT

switchyard demo is running: proxy http://127.0.0.1:8080, admin http://127.0.0.1:9090
admin token: $SWITCHYARD_ADMIN_TOKEN   policy: $policy (edit it: reloaded within a second)

Try:
  curl -s localhost:8080/v1/models
  curl -si localhost:8080/v1/chat/completions -H 'x-user-id: alice' \\
       -d '{"model":"llama-70b","messages":[{"role":"user","content":"Hello!"}],"max_tokens":16}'
  curl -sN localhost:8080/v1/chat/completions \\
       -d '{"model":"llama-8b","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Count to ten"}],"max_tokens":10}'
  $bin status
  $bin push routes/demo.toml --reason "no-op push"     # same content: no new version
  $bin rollback                                       # undo the last change
  $bin history
  curl -s localhost:9090/metrics | grep switchyard_requests_total

Ctrl-C stops everything.
TXT
wait -n "${pids[@]}"
