#!/usr/bin/env bash
# Direct gRPC Check throughput over TLS versus plaintext, side by side in one run.
#
# Two celgate processes serve the same policies, one plaintext and one with --tls-cert/--tls-key
# (certificates from examples/dev_certs.rs); h2load drives them ALTERNATELY (plaintext, TLS,
# plaintext, TLS, ...) with the same request file, so drift on a noisy machine hits both alike.
# The number that counts is the ratio TLS / plaintext (never a lone absolute req/s figure).
# Connections are long-lived (h2load -c): this measures the per-request cost of encryption, not
# handshakes.
#
# Before and after the runs, the request is sent once to each server with
# examples/check_once.rs and the decision asserted (h2load only counts HTTP 200s and never reads
# grpc-status); the TLS one over TLS, checking the server certificate.
#
# Usage:   bash scripts/bench-tls.sh
# Env:
#   ROUNDS=3               alternating plaintext/TLS pairs
#   DURATION=5             seconds per h2load run (-D); or
#   REQUESTS_N=            a request count per h2load run instead (-n), e.g. 2000 for a smoke run
#   WARMUP=1               seconds of unmeasured load on each server first (0: none)
#   CONNS=16 STREAMS=16    h2load -c / -m
#   POLICIES=benches/policies
#   PLAIN_ADDR=127.0.0.1:9491  PLAIN_HTTP=127.0.0.1:9492
#   TLS_ADDR=127.0.0.1:9591    TLS_HTTP=127.0.0.1:9592
#   TLS_MIN_VERSION=       passed as --tls-min-version (1.2 or 1.3) when set
#   CELGATE_ARGS=""        extra arguments for both `celgate serve`
#   NO_BUILD=1             skip `cargo build` (binaries from $CARGO_TARGET_DIR/release, else target/release)
#
# The request is benches/load.sh's "worst": GET /api/orders with an API key and a tenant, which
# passes through all six bench policies and is allowed with header mutations.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
REQUESTS_N=${REQUESTS_N:-}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-16}
STREAMS=${STREAMS:-16}
POLICIES=${POLICIES:-benches/policies}
PLAIN_ADDR=${PLAIN_ADDR:-127.0.0.1:9491}
PLAIN_HTTP=${PLAIN_HTTP:-127.0.0.1:9492}
TLS_ADDR=${TLS_ADDR:-127.0.0.1:9591}
TLS_HTTP=${TLS_HTTP:-127.0.0.1:9592}
TLS_MIN_VERSION=${TLS_MIN_VERSION:-}
CELGATE_ARGS=${CELGATE_ARGS:-}

BIN=${CARGO_TARGET_DIR:-target}/release
CELGATE_BIN=$BIN/celgate
CHECK_PATH=/envoy.service.auth.v3.Authorization/Check
SERVER_NAME=celgate.internal

die() { echo "bench-tls.sh: $*" >&2; exit 1; }

command -v h2load >/dev/null || die "h2load not found (apt-get install nghttp2-client)"
command -v curl >/dev/null || die "curl not found"
[[ -d $POLICIES ]] || die "policy directory $POLICIES does not exist"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ -z $REQUESTS_N || $REQUESTS_N =~ ^[1-9][0-9]*$ ]] || die "REQUESTS_N must be a positive integer"

if [[ -z ${NO_BUILD:-} ]]; then
  echo "== cargo build --release (celgate, make_request, check_once, dev_certs)" >&2
  cargo build --release --bin celgate --example make_request --example check_once \
    --example dev_certs >&2
fi
for b in "$CELGATE_BIN" "$BIN/examples/make_request" "$BIN/examples/check_once" "$BIN/examples/dev_certs"; do
  [[ -x $b ]] || die "$b was not built"
done

bench_workdir celgate-bench-tls
bench_ports_free "$PLAIN_ADDR" "$PLAIN_HTTP" "$TLS_ADDR" "$TLS_HTTP"

"$BIN/examples/dev_certs" --out "$WORK/certs" --server-dns "$SERVER_NAME" >/dev/null

TLS_FLAGS=(--tls-cert "$WORK/certs/celgate.pem" --tls-key "$WORK/certs/celgate.key")
[[ -n $TLS_MIN_VERSION ]] && TLS_FLAGS+=(--tls-min-version "$TLS_MIN_VERSION")

echo "== starting celgate (plaintext) on $PLAIN_ADDR and celgate (TLS) on $TLS_ADDR, policies $POLICIES" >&2
# shellcheck disable=SC2086
"$CELGATE_BIN" serve --policies "$POLICIES" --grpc-addr "$PLAIN_ADDR" --http-addr "$PLAIN_HTTP" \
  $CELGATE_ARGS >"$WORK/plain.log" 2>&1 &
PLAIN_PID=$!
BENCH_PIDS+=("$PLAIN_PID")
# shellcheck disable=SC2086
"$CELGATE_BIN" serve --policies "$POLICIES" --grpc-addr "$TLS_ADDR" --http-addr "$TLS_HTTP" \
  "${TLS_FLAGS[@]}" $CELGATE_ARGS >"$WORK/tls.log" 2>&1 &
TLS_PID=$!
BENCH_PIDS+=("$TLS_PID")

ready=""
for _ in $(seq 1 300); do
  kill -0 "$PLAIN_PID" 2>/dev/null || { cat "$WORK/plain.log" >&2; die "plaintext celgate exited during start-up"; }
  kill -0 "$TLS_PID" 2>/dev/null || { cat "$WORK/tls.log" >&2; die "TLS celgate exited during start-up"; }
  if curl -sf "http://$PLAIN_HTTP/readyz" >/dev/null 2>&1 && curl -sf "http://$TLS_HTTP/readyz" >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.1
done
[[ -n $ready ]] || die "celgate not ready after 30s"

# The request: benches/load.sh's "worst".
"$BIN/examples/make_request" --out "$WORK/req.bin" --method GET --path '/api/orders?limit=10' \
  --host api.example.com --header x-api-key=k-alice-7f3a9c --header x-tenant=acme \
  --header 'user-agent=Mozilla/5.0 (X11; Linux x86_64) bench' --header accept=application/json \
  2>/dev/null || die "make_request failed"
EXPECT=(--expect-allowed --expect-header x-user=alice --expect-header x-auth-tenant=acme
  --expect-remove x-api-key)

check_decisions() { # $1: when ("before" / "after")
  local out
  out=$("$BIN/examples/check_once" --addr "$PLAIN_ADDR" --file "$WORK/req.bin" "${EXPECT[@]}" 2>&1) \
    || { echo "$out" >&2; die "plaintext celgate's answer is not the decision to be measured ($1)"; }
  printf '  %-6s plaintext: %s\n' "$1" "$(head -n1 <<<"$out")" >&2
  out=$("$BIN/examples/check_once" --addr "$TLS_ADDR" --file "$WORK/req.bin" \
    --tls-ca "$WORK/certs/ca.pem" --tls-domain "$SERVER_NAME" "${EXPECT[@]}" 2>&1) \
    || { echo "$out" >&2; die "TLS celgate's answer is not the decision to be measured ($1)"; }
  printf '  %-6s TLS:       %s\n' "$1" "$(head -n1 <<<"$out")" >&2
}

echo "== decisions" >&2
check_decisions before

# h2load against URL $1 for $2 (-D seconds, or -n requests when REQUESTS_N is set); prints
# "req/s<TAB>TLS protocol and cipher".
h2() {
  local url=$1 secs=$2 out rps tls_info load
  if [[ -n $REQUESTS_N && $secs != warmup:* ]]; then
    load=(-n "$REQUESTS_N")
  else
    load=(-D "${secs#warmup:}")
  fi
  out=$(h2load "${load[@]}" -c "$CONNS" -m "$STREAMS" -t 1 -d "$WORK/req.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' "$url" 2>&1) \
    || { echo "$out" >&2; die "h2load failed against $url"; }
  rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  [[ -n $rps ]] || { echo "$out" >&2; die "could not parse h2load output for $url"; }
  local failed errored non2xx
  failed=$(sed -n 's/^requests: .* \([0-9]*\) failed.*/\1/p' <<<"$out")
  errored=$(sed -n 's/^requests: .* \([0-9]*\) errored.*/\1/p' <<<"$out")
  non2xx=$(sed -n 's/^status codes: [0-9]* 2xx, \([0-9]*\) 3xx, \([0-9]*\) 4xx, \([0-9]*\) 5xx.*/\1 \2 \3/p' <<<"$out")
  if [[ ${failed:-x} != 0 || ${errored:-x} != 0 || $non2xx != "0 0 0" ]]; then
    echo "$out" >&2
    die "h2load against $url: failed=$failed errored=$errored non-2xx(3xx 4xx 5xx)=$non2xx"
  fi
  tls_info=$(sed -n 's/^TLS Protocol: \(.*\)$/\1/p; s/^Cipher: \(.*\)$/\1/p' <<<"$out" | paste -sd' ' -)
  if [[ $url == https://* && -z $tls_info ]]; then
    echo "$out" >&2
    die "h2load did not report a TLS session against $url"
  fi
  printf '%s\t%s\n' "$rps" "${tls_info:-none}"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) printf "%.4f\n", v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

PLAIN_URL="http://$PLAIN_ADDR$CHECK_PATH"
TLS_URL="https://$TLS_ADDR$CHECK_PATH"

if [[ $WARMUP != 0 ]]; then
  echo "== warm-up (${WARMUP}s each, not counted)" >&2
  h2 "$PLAIN_URL" "warmup:$WARMUP" >/dev/null
  h2 "$TLS_URL" "warmup:$WARMUP" >/dev/null
fi

RESULTS=$WORK/results.tsv
: >"$RESULTS"
if [[ -n $REQUESTS_N ]]; then what="-n $REQUESTS_N"; else what="-D $DURATION"; fi
echo "== measuring: $ROUNDS round(s), h2load $what -c $CONNS -m $STREAMS -t 1, alternating plaintext/TLS" >&2
TLS_SESSION=""
for round in $(seq 1 "$ROUNDS"); do
  IFS=$'\t' read -r p _ < <(h2 "$PLAIN_URL" "$DURATION")
  IFS=$'\t' read -r t TLS_SESSION < <(h2 "$TLS_URL" "$DURATION")
  ratio=$(awk -v t="$t" -v p="$p" 'BEGIN { printf "%.4f", t / p }')
  printf '%s\t%s\t%s\t%s\n' "$round" "$p" "$t" "$ratio" >>"$RESULTS"
  printf '  round %d  plaintext %10.0f req/s   TLS %10.0f req/s   ratio %s\n' \
    "$round" "$p" "$t" "$ratio" >&2
done

echo "== decisions again" >&2
check_decisions after

PLAIN_RSS=$(awk '/^VmRSS:/ { print $2 }' "/proc/$PLAIN_PID/status" 2>/dev/null || echo "?")
TLS_RSS=$(awk '/^VmRSS:/ { print $2 }' "/proc/$TLS_PID/status" 2>/dev/null || echo "?")

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "no-commit")
DIRTY=$(git status --porcelain 2>/dev/null | grep -q . && echo "+dirty" || true)
echo
echo "celgate TLS benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $COMMIT$DIRTY"
echo "machine: $(nproc) cpus, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
echo "policies: $POLICIES; request: worst (allowed with header mutations)"
echo "h2load $what -c $CONNS -m $STREAMS -t 1; $ROUNDS alternating round(s); TLS: $TLS_SESSION"
echo
printf '%5s %16s %12s %8s\n' round "plaintext req/s" "TLS req/s" ratio
while IFS=$'\t' read -r round p t ratio; do
  printf '%5s %16.0f %12.0f %8s\n' "$round" "$p" "$t" "$ratio"
done <"$RESULTS"
echo
mp=$(cut -f2 "$RESULTS" | median)
mt=$(cut -f3 "$RESULTS" | median)
mr=$(cut -f4 "$RESULTS" | median)
printf 'median: plaintext %.0f req/s, TLS %.0f req/s, ratio TLS/plaintext %s\n' "$mp" "$mt" "$mr"
echo "RSS after load: plaintext ${PLAIN_RSS} kB, TLS ${TLS_RSS} kB"
