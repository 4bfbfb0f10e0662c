#!/usr/bin/env bash
# External checkers against a running vigil-server (`just check-external`):
#
# - schemathesis (from PyPI) generates requests from docs/openapi.yaml and
#   checks every answer: no 5xx, documented status codes, content types and
#   schemas, 405 with an Allow header, bad input refused, auth enforced;
# - openssl s_client talks to the mTLS port: a trusted certificate is
#   served (the control), an unknown certificate, no certificate, and
#   TLS 1.2 are refused.
#
# It builds the binaries, makes a deployment with `vigilctl init` in a
# temporary directory, starts a server and a client, runs the checks and
# exits non-zero if any failed. SCHEMATHESIS_MAX_TIME (seconds, default 120)
# bounds the schemathesis run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --quiet -p vigil-server-bin -p vigil-client-bin -p vigilctl
bin="$root/target/debug"

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
http=$(free_port)
"$bin/vigilctl" init "$work" --port "$port" --http-port "$http" >/dev/null
(cd "$work" && exec "$bin/vigil-server" --config server.toml 2>server.log) &
pids+=($!)
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$http/health" >/dev/null 2>&1 && break
    sleep 0.1
done
(cd "$work" && exec "$bin/vigil-client" --config client.toml 2>client.log) &
pids+=($!)
token=$(cat "$work/server-data/api-token")
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

echo "== openssl s_client against the mTLS port 127.0.0.1:$port"
ping() { printf 'sys:ping:ext {}\n' | timeout 5 openssl s_client -connect "127.0.0.1:$port" -quiet -ign_eof "$@" 2>&1 || true; }
out=$(ping -tls1_3 -cert "$work/client.crt" -key "$work/client.key")
if grep -q '^sys:pong:ext' <<<"$out"; then echo "ok: the trusted client certificate is served"; else fail "trusted certificate not served: $out"; fi
openssl req -x509 -newkey ed25519 -nodes -days 1 -subj /CN=stranger \
    -keyout "$work/stranger.key" -out "$work/stranger.crt" 2>/dev/null
out=$(ping -tls1_3 -cert "$work/stranger.crt" -key "$work/stranger.key")
if grep -q 'sys:pong' <<<"$out"; then fail "an unknown certificate was served"; else echo "ok: an unknown certificate is refused ($(grep -o 'alert [a-z ]*' <<<"$out" | head -1))"; fi
out=$(ping -tls1_3)
if grep -q 'sys:pong' <<<"$out"; then fail "a client without a certificate was served"; else echo "ok: no certificate is refused ($(grep -o 'alert [a-z ]*' <<<"$out" | head -1))"; fi
out=$(ping -tls1_2 -cert "$work/client.crt" -key "$work/client.key")
if grep -q 'sys:pong' <<<"$out"; then fail "TLS 1.2 was accepted"; else echo "ok: TLS 1.2 is refused ($(grep -o 'alert [a-z ]*\|no protocols available' <<<"$out" | head -1))"; fi

echo "== schemathesis against the REST API http://127.0.0.1:$http"
if ! command -v schemathesis >/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check schemathesis
fi
if schemathesis run docs/openapi.yaml \
    --url "http://127.0.0.1:$http" \
    --header "Authorization: Bearer $token" \
    --checks all \
    --max-time "${SCHEMATHESIS_MAX_TIME:-120}" \
    --workers 2; then
    echo "ok: schemathesis found no failure"
else
    fail "schemathesis (see above)"
fi
if ! kill -0 "${pids[0]}" 2>/dev/null; then
    fail "the server is no longer running"
fi

if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed; server log: $(tail -5 "$work/server.log")"
    exit 1
fi
echo "all external checks passed"
