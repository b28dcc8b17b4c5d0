#!/usr/bin/env bash
# Cost of a shadow policy set: direct gRPC throughput of celgate with and without
# --shadow-policies, each as a ratio to the no-op floor (examples/floor.rs), measured side by
# side in one run like benches/load.sh.
#
# Three servers run at once: the floor, celgate serving POLICIES ("plain"), and celgate serving
# POLICIES with SHADOW_POLICIES as its shadow set ("shadow", SHADOW_ARGS, by default every
# request sampled). h2load drives them in turn (floor, plain, shadow, floor, ...) so drift on a
# noisy machine hits all three alike. The figures that count are plain/floor, shadow/floor and
# shadow/plain from one run.
#
# The shadow set is evaluated after each answer on --shadow-threads threads behind a queue of
# --shadow-max-pending; under saturating load the queue fills and further shadow evaluations are
# dropped (counted), never waited for. So the report also gives what the shadow server did with
# the requests it sampled (celgate_shadow_evaluations_total by result): a throughput ratio means
# little without the share of requests that were actually compared.
#
# Before and after measuring, the request is sent once to each server with examples/check_once.rs
# and the answer asserted: the shadow set must never change it.
#
# Usage:   bash benches/shadow.sh
# Env:
#   ROUNDS=3 DURATION=5 WARMUP=1 CONNS=16 STREAMS=16   as in benches/load.sh
#   POLICIES=benches/policies          the served set
#   SHADOW_POLICIES=$POLICIES          the shadow set (default: the same policies, so every
#                                      comparison agrees and costs a full evaluation)
#   SHADOW_ARGS="--shadow-sample 1.0"  more flags for the shadow server (e.g. --shadow-threads 2)
#   CELGATE_ARGS=""                    flags for both celgate servers
#   PROFILE=release                    release or debug (debug: only to try the script quickly)
#   NO_BUILD=1                         skip `cargo build`
#   FLOOR_ADDR=127.0.0.1:9291  PLAIN_GRPC=127.0.0.1:9391  PLAIN_HTTP=127.0.0.1:9392
#   SHADOW_GRPC=127.0.0.1:9491 SHADOW_HTTP=127.0.0.1:9492
#
# The request is load.sh's "worst" (passes all six bench policies, allowed with header
# mutations); with other POLICIES set REQUEST_ARGS and EXPECT_ARGS (make_request / check_once
# arguments, as load.sh's REQUESTS=custom).
#
# A quick check that the script works (seconds, debug build, no meaningful figures):
#   PROFILE=debug ROUNDS=1 DURATION=1 WARMUP=0 CONNS=2 STREAMS=2 bash benches/shadow.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-16}
STREAMS=${STREAMS:-16}
POLICIES=${POLICIES:-benches/policies}
SHADOW_POLICIES=${SHADOW_POLICIES:-$POLICIES}
SHADOW_ARGS=${SHADOW_ARGS:---shadow-sample 1.0}
CELGATE_ARGS=${CELGATE_ARGS:-}
PROFILE=${PROFILE:-release}
FLOOR_ADDR=${FLOOR_ADDR:-127.0.0.1:9291}
PLAIN_GRPC=${PLAIN_GRPC:-127.0.0.1:9391}
PLAIN_HTTP=${PLAIN_HTTP:-127.0.0.1:9392}
SHADOW_GRPC=${SHADOW_GRPC:-127.0.0.1:9491}
SHADOW_HTTP=${SHADOW_HTTP:-127.0.0.1:9492}
REQUEST_ARGS=${REQUEST_ARGS:-}
EXPECT_ARGS=${EXPECT_ARGS:-}
CHECK_PATH=/envoy.service.auth.v3.Authorization/Check

die() { echo "shadow.sh: $*" >&2; exit 1; }

command -v h2load >/dev/null || die "h2load not found (apt-get install nghttp2-client)"
command -v curl >/dev/null || die "curl not found"
[[ -e $POLICIES ]] || die "$POLICIES does not exist"
[[ -e $SHADOW_POLICIES ]] || die "$SHADOW_POLICIES does not exist"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
case $PROFILE in
  release) BIN=${CARGO_TARGET_DIR:-target}/release; CARGO_PROFILE=(--release) ;;
  debug) BIN=${CARGO_TARGET_DIR:-target}/debug; CARGO_PROFILE=() ;;
  *) die "PROFILE must be release or debug" ;;
esac

if [[ -n $REQUEST_ARGS ]]; then
  [[ -n $EXPECT_ARGS ]] || die "REQUEST_ARGS needs EXPECT_ARGS"
  eval "REQ=($REQUEST_ARGS)"
  eval "EXP=($EXPECT_ARGS)"
else
  REQ=(--method GET --path '/api/orders?limit=10' --host api.example.com
    --header x-api-key=k-alice-7f3a9c --header x-tenant=acme
    --header 'user-agent=Mozilla/5.0 (X11; Linux x86_64) bench'
    --header accept=application/json)
  EXP=(--expect-allowed --expect-header x-user=alice --expect-header x-auth-tenant=acme
    --expect-remove x-api-key)
fi

if [[ -z ${NO_BUILD:-} ]]; then
  echo "== cargo build ${CARGO_PROFILE[*]} (celgate, floor, make_request, check_once)" >&2
  cargo build "${CARGO_PROFILE[@]}" --bin celgate --example floor --example make_request \
    --example check_once >&2
fi
for b in "$BIN/celgate" "$BIN/examples/floor" "$BIN/examples/make_request" "$BIN/examples/check_once"; do
  [[ -x $b ]] || die "$b was not built"
done

bench_workdir celgate-shadow
bench_ports_free "$FLOOR_ADDR" "$PLAIN_GRPC" "$PLAIN_HTTP" "$SHADOW_GRPC" "$SHADOW_HTTP"

"$BIN/examples/floor" --addr "$FLOOR_ADDR" >"$WORK/floor.log" 2>&1 &
BENCH_PIDS+=($!)
# shellcheck disable=SC2086
"$BIN/celgate" serve --policies "$POLICIES" --grpc-addr "$PLAIN_GRPC" --http-addr "$PLAIN_HTTP" \
  $CELGATE_ARGS >"$WORK/plain.log" 2>&1 &
BENCH_PIDS+=($!)
# shellcheck disable=SC2086
"$BIN/celgate" serve --policies "$POLICIES" --grpc-addr "$SHADOW_GRPC" --http-addr "$SHADOW_HTTP" \
  --shadow-policies "$SHADOW_POLICIES" $SHADOW_ARGS $CELGATE_ARGS >"$WORK/shadow.log" 2>&1 &
SHADOW_PID=$!
BENCH_PIDS+=("$SHADOW_PID")

ready=""
for _ in $(seq 1 300); do
  for pid in "${BENCH_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$WORK"/*.log >&2; die "a server exited during start-up"; }
  done
  if curl -sf "http://$PLAIN_HTTP/readyz" >/dev/null 2>&1 && curl -sf "http://$SHADOW_HTTP/readyz" >/dev/null 2>&1 \
    && port_in_use "$FLOOR_ADDR"; then
    ready=1
    break
  fi
  sleep 0.1
done
[[ -n $ready ]] || die "servers not ready after 30s"

"$BIN/examples/make_request" --out "$WORK/req.bin" "${REQ[@]}" 2>/dev/null || die "make_request failed"

check_decisions() { # $1: before / after
  local out
  out=$("$BIN/examples/check_once" --addr "$FLOOR_ADDR" --file "$WORK/req.bin" --expect-allowed 2>&1) \
    || die "floor answered unexpectedly ($1): $out"
  for addr in "$PLAIN_GRPC" "$SHADOW_GRPC"; do
    out=$("$BIN/examples/check_once" --addr "$addr" --file "$WORK/req.bin" "${EXP[@]}" 2>&1) \
      || { echo "$out" >&2; die "$addr: not the decision to be measured ($1 the runs)"; }
  done
  echo "  decisions $1: as expected on all three servers" >&2
}
check_decisions before

h2() { # $1 addr, $2 seconds; prints "req/s mean-latency-ms"
  local out rps mean failed errored non2xx
  out=$(h2load -D "$2" -c "$CONNS" -m "$STREAMS" -t 1 -d "$WORK/req.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' "http://$1$CHECK_PATH" 2>&1) \
    || { echo "$out" >&2; die "h2load failed against $1"; }
  rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  # "time for request:  min  max  mean  sd  +/- sd", each with its unit (us, ms or s).
  mean=$(awk '/^time for request:/ { v = $6; f = 1
    if (v ~ /us$/) f = 0.001; else if (v ~ /ms$/) f = 1; else if (v ~ /s$/) f = 1000
    sub(/[a-z]+$/, "", v); printf "%.3f", v * f }' <<<"$out")
  failed=$(sed -n 's/^requests: .* \([0-9]*\) failed.*/\1/p' <<<"$out")
  errored=$(sed -n 's/^requests: .* \([0-9]*\) errored.*/\1/p' <<<"$out")
  non2xx=$(sed -n 's/^status codes: [0-9]* 2xx, \([0-9]*\) 3xx, \([0-9]*\) 4xx, \([0-9]*\) 5xx.*/\1 \2 \3/p' <<<"$out")
  if [[ -z $rps || ${failed:-x} != 0 || ${errored:-x} != 0 || $non2xx != "0 0 0" ]]; then
    echo "$out" >&2
    die "h2load against $1: rps=$rps failed=$failed errored=$errored non-2xx=$non2xx"
  fi
  echo "$rps ${mean:-nan}"
}
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) printf "%.4f\n", v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

if [[ $WARMUP != 0 ]]; then
  for a in "$FLOOR_ADDR" "$PLAIN_GRPC" "$SHADOW_GRPC"; do h2 "$a" "$WARMUP" >/dev/null; done
fi
shadow_results() {
  curl -sf "http://$SHADOW_HTTP/metrics" | sed -n 's/^celgate_shadow_evaluations_total{result="\([a-z]*\)"} \([0-9]*\)$/\1=\2/p' | tr '\n' ' '
}
BEFORE=$(shadow_results)

RESULTS=$WORK/results.tsv
: >"$RESULTS"
echo "== measuring: $ROUNDS round(s) x ${DURATION}s, h2load -c $CONNS -m $STREAMS -t 1, floor/plain/shadow in turn" >&2
for round in $(seq 1 "$ROUNDS"); do
  read -r f _ < <(h2 "$FLOOR_ADDR" "$DURATION")
  read -r p pl < <(h2 "$PLAIN_GRPC" "$DURATION")
  read -r s sl < <(h2 "$SHADOW_GRPC" "$DURATION")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$f" "$p" "$s" \
    "$(awk -v a="$p" -v b="$f" 'BEGIN { printf "%.4f", a / b }')" \
    "$(awk -v a="$s" -v b="$f" 'BEGIN { printf "%.4f", a / b }')" \
    "$(awk -v a="$s" -v b="$p" 'BEGIN { printf "%.4f", a / b }')" "$pl" "$sl" >>"$RESULTS"
  tail -n1 "$RESULTS" | awk -F'\t' '{ printf "  round %s floor %.0f plain %.0f shadow %.0f req/s; mean latency plain %s ms shadow %s ms\n", $1, $2, $3, $4, $8, $9 }' >&2
done
# Shadow evaluations end after the answers: let the queue drain before reading the counts.
sleep 1
AFTER=$(shadow_results)
check_decisions after
RSS_PLAIN=$(awk '/^VmHWM:/ { print $2 }' "/proc/${BENCH_PIDS[1]}/status" 2>/dev/null || echo "?")
RSS_SHADOW=$(awk '/^VmHWM:/ { print $2 }' "/proc/$SHADOW_PID/status" 2>/dev/null || echo "?")

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "no-commit")
DIRTY=$(git status --porcelain 2>/dev/null | grep -q . && echo "+dirty" || true)
echo
echo "celgate shadow benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $COMMIT$DIRTY  ($PROFILE build)"
echo "machine: $(nproc) cpus, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
echo "policies: $POLICIES; shadow: $SHADOW_POLICIES $SHADOW_ARGS"
echo "h2load -D $DURATION -c $CONNS -m $STREAMS -t 1; $ROUNDS round(s)"
echo
printf '%5s %12s %12s %12s %12s %12s %14s %10s %10s\n' round "floor req/s" "plain req/s" "shadow req/s" plain/floor shadow/floor shadow/plain "plain ms" "shadow ms"
while IFS=$'\t' read -r round f p s pf sf sp pl sl; do
  printf '%5s %12.0f %12.0f %12.0f %12s %12s %14s %10s %10s\n' "$round" "$f" "$p" "$s" "$pf" "$sf" "$sp" "$pl" "$sl"
done <"$RESULTS"
printf 'median %s %s %s\n' \
  "plain/floor $(cut -f5 "$RESULTS" | median)" \
  "shadow/floor $(cut -f6 "$RESULTS" | median)" \
  "shadow/plain $(cut -f7 "$RESULTS" | median)"
printf 'median mean latency (h2load "time for request"): plain %s ms, shadow %s ms\n' \
  "$(cut -f8 "$RESULTS" | median)" "$(cut -f9 "$RESULTS" | median)"
echo
echo "shadow evaluations before the measured runs: ${BEFORE:-none}"
echo "shadow evaluations after:                    ${AFTER:-none}"
echo "(the requests the shadow server answered in the measured runs were all sampled; the"
echo " difference tells how many were compared (agree/disagree) and how many were dropped)"
echo "peak RSS: plain ${RSS_PLAIN} kB, shadow ${RSS_SHADOW} kB"
