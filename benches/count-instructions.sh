#!/usr/bin/env bash
# Instructions the gateway executes per request, counted by callgrind: a figure that, unlike
# CPU time, does not move with whatever else the machine is doing. Needs valgrind and python3.
#
#   benches/count-instructions.sh BINARY hit|proxy|floor-proxy|floor-answer [REQUESTS]
#
# Starts a zero-work sim and BINARY's gateway under callgrind (one thread), sends 300 warm-up
# requests and then REQUESTS (default 1000) more, one keep-alive client, the small chat body of
# scenario 10, and prints the user-space instructions per request: all of them, and apart from
# memcpy, which callgrind counts per byte for `rep movsb` and so overweights against its time.
# `hit`: the route caches every request (each measured one is a hit); `proxy`: no cache.
# `floor-proxy` / `floor-answer`: the pingora floor of `switchyard-bench floor` (found beside
# BINARY) in place of the gateway: a bare `ProxyHttp` proxying to the sim, or pingora's HTTP/1
# session answering by itself: the least a request costs on pingora, to set `proxy` and `hit`
# against.
set -euo pipefail
bin=$(realpath "$1"); mode=$2; n=${3:-1000}
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sim=$(port); gw=$(port); admin=$(port)
cat > "$work/policy.toml" <<POLICY
[server]
listen = "127.0.0.1:$gw"
admin_listen = "127.0.0.1:$admin"
admin_token_env = "SWITCHYARD_ADMIN_TOKEN"
threads = 1

[[backends]]
name = "s1"
url = "http://127.0.0.1:$sim"
model = "bench-model"

[[routes]]
name = "chat"
models = ["bench-model"]
sticky = "none"

  [[routes.arms]]
  name = "champion"
  backends = ["s1"]
  weight = 100
POLICY
if [ "$mode" = hit ]; then printf '\n  [routes.cache]\n  ttl_s = 3600\n  requests = "all"\n' >> "$work/policy.toml"; fi
"$bin" sim --listen "127.0.0.1:$sim" --model bench-model > "$work/sim.log" 2>&1 &
case $mode in
  hit | proxy) gateway=("$bin" serve --config "$work/policy.toml") ;;
  floor-proxy) gateway=("$(dirname "$bin")/switchyard-bench" floor --listen "127.0.0.1:$gw" --upstream "127.0.0.1:$sim") ;;
  floor-answer) gateway=("$(dirname "$bin")/switchyard-bench" floor --listen "127.0.0.1:$gw" --answer) ;;
  *) echo "mode must be hit, proxy, floor-proxy or floor-answer" >&2; exit 2 ;;
esac
SWITCHYARD_ADMIN_TOKEN=t valgrind --tool=callgrind --cache-sim=no --branch-sim=no \
  --callgrind-out-file="$work/cg.%p" "${gateway[@]}" > "$work/gw.log" 2>&1 &
vg=$!
cat > "$work/client.py" <<'PY'
import http.client, json, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
body = json.dumps({"model": "bench-model", "temperature": 0, "max_tokens": 8,
                   "messages": [{"role": "user", "content": "What is the capital of France?"}]})
for _ in range(120):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60); c.connect(); break
    except OSError:
        time.sleep(0.5)
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
python3 "$work/client.py" "$gw" 300
callgrind_control -z "$vg" > /dev/null 2>&1
python3 "$work/client.py" "$gw" "$n"
callgrind_control -d "$vg" > /dev/null 2>&1
sleep 1
out=$(ls -t "$work"/cg.*.* | head -1)
total=$(awk '/^(totals|summary):/ && !done {print $2; done = 1}' "$out")
memcpy=$(callgrind_annotate --inclusive=no --threshold=100 --auto=no "$out" 2>/dev/null \
  | awk '/__memcpy/ && !done {gsub(",", "", $1); print $1; done = 1}')
memcpy=${memcpy:-0}
echo "$mode: $((total / n)) instructions per request; $(((total - memcpy) / n)) without memcpy, $((memcpy / n)) in memcpy"
