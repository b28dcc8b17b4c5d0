#!/usr/bin/env bash
# Load benchmark: celgate versus a no-op ext_authz "floor" built from the same tonic stack.
#
# Both servers run at once; h2load drives them ALTERNATELY (floor, celgate, floor, celgate, ...)
# so drift on a noisy machine hits both sides alike. The number that counts is the ratio
# celgate / floor, measured side by side in one run (see ../shared/MEASURING.md): never quote a
# lone absolute req/s figure.
#
# Each run also reads the server's CPU time (user + system, from /proc) and reports it per
# request, beside the req/s: where a request's time goes, not only how many fit.
#
# Before any measuring, every request is sent once with examples/check_once.rs and the answer is
# asserted (h2load only counts HTTP 200s; it never reads grpc-status), and again after the runs.
#
# Usage:   bash benches/load.sh
# Env:
#   ROUNDS=3               alternating floor/celgate pairs per request
#   DURATION=5             seconds per h2load run (-D)
#   WARMUP=1               seconds of unmeasured load on each server first (0: none)
#   CONNS=16 STREAMS=16    h2load -c / -m
#   POLICIES=benches/policies
#   REQUESTS="worst"       space-separated request set, from:
#       worst    GET /api/orders with an API key and a tenant: passes through all six bench
#                policies (five return null or are skipped, the last allows with header
#                mutations) -- the realistic worst case. Expects allowed, x-user: alice,
#                x-auth-tenant: acme, x-api-key removed.
#       denied   the same without an API key: denied 401 by the fourth policy.
#       skipped  GET /healthz: one policy evaluated, five skipped, no result -> allowed.
#       custom   make_request arguments from REQUEST_ARGS, check_once expectations from
#                EXPECT_ARGS (e.g. EXPECT_ARGS='--expect-denied 403'); use with your own POLICIES.
#   FLOOR_ADDR=127.0.0.1:9291  GRPC_ADDR=127.0.0.1:9391  HTTP_ADDR=127.0.0.1:9392
#   CELGATE_ARGS=""        extra arguments for `celgate serve`
#   BASELINE_BIN=          a second celgate binary (e.g. built from an earlier commit in its own
#                          target directory) run beside the first and measured in the same
#                          rounds (floor, celgate, baseline; reversed every other round): the
#                          report adds its req/s and CPU per request and the median of
#                          celgate/baseline, the comparison of two builds on the same noise
#   BASELINE_ARGS=""       extra arguments for the baseline's `celgate serve`
#   BASELINE_GRPC_ADDR=127.0.0.1:9491  BASELINE_HTTP_ADDR=127.0.0.1:9492
#   NO_BUILD=1             skip the build
#   PGO=1                  measure profile-guided builds of celgate AND the floor, made by
#                          scripts/pgo-build.sh (trained on the repository's suites and bundled
#                          policies, not on benches/policies) in target/pgo/use: the build the
#                          container image ships (PGO_DIR as that script reads it). PGO=0 (the
#                          default): plain `cargo build --release`.
#   BIN=target/release     where the floor and the helper examples are ($PGO_DIR/use/release
#                          with PGO=1)
#   CELGATE_BIN=$BIN/celgate
#
# The default REQUESTS expectations hold for benches/policies only; with other POLICIES use
# REQUESTS=custom and say what answer you expect.
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
REQUESTS=${REQUESTS:-worst}
FLOOR_ADDR=${FLOOR_ADDR:-127.0.0.1:9291}
GRPC_ADDR=${GRPC_ADDR:-127.0.0.1:9391}
HTTP_ADDR=${HTTP_ADDR:-127.0.0.1:9392}
CELGATE_ARGS=${CELGATE_ARGS:-}
BASELINE_BIN=${BASELINE_BIN:-}
BASELINE_ARGS=${BASELINE_ARGS:-}
BASELINE_GRPC_ADDR=${BASELINE_GRPC_ADDR:-127.0.0.1:9491}
BASELINE_HTTP_ADDR=${BASELINE_HTTP_ADDR:-127.0.0.1:9492}
REQUEST_ARGS=${REQUEST_ARGS:-}
EXPECT_ARGS=${EXPECT_ARGS:-}

die() { echo "load.sh: $*" >&2; exit 1; }

bench_bin
CELGATE_BIN=${CELGATE_BIN:-$BIN/celgate}
CHECK_PATH=/envoy.service.auth.v3.Authorization/Check

command -v h2load >/dev/null || die "h2load not found (apt-get install nghttp2-client)"
command -v curl >/dev/null || die "curl not found"
[[ -d $POLICIES ]] || die "policy directory $POLICIES does not exist"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"

# ---------------------------------------------------------------------------------------------
# Request set: make_request arguments and check_once expectations per name.

request_args() {
  case $1 in
    worst)
      printf '%s\n' --method GET --path '/api/orders?limit=10' --host api.example.com \
        --header x-api-key=k-alice-7f3a9c --header x-tenant=acme \
        --header 'user-agent=Mozilla/5.0 (X11; Linux x86_64) bench' \
        --header accept=application/json ;;
    denied)
      printf '%s\n' --method GET --path '/api/orders?limit=10' --host api.example.com \
        --header x-tenant=acme \
        --header 'user-agent=Mozilla/5.0 (X11; Linux x86_64) bench' \
        --header accept=application/json ;;
    skipped)
      printf '%s\n' --method GET --path /healthz --host api.example.com \
        --header 'user-agent=kube-probe/1.31' ;;
    custom)
      [[ -n $REQUEST_ARGS ]] || die "REQUESTS=custom needs REQUEST_ARGS"
      eval "printf '%s\n' $REQUEST_ARGS" ;;
    *) die "unknown request '$1' (worst, denied, skipped, custom)" ;;
  esac
}

expect_args() {
  case $1 in
    worst)
      printf '%s\n' --expect-allowed --expect-header x-user=alice \
        --expect-header x-auth-tenant=acme --expect-remove x-api-key ;;
    denied) printf '%s\n' --expect-denied 401 ;;
    skipped) printf '%s\n' --expect-allowed ;;
    custom)
      [[ -n $EXPECT_ARGS ]] || die "REQUESTS=custom needs EXPECT_ARGS"
      eval "printf '%s\n' $EXPECT_ARGS" ;;
  esac
}

for r in $REQUESTS; do
  case $r in
    worst | denied | skipped) ;;
    custom) [[ -n $REQUEST_ARGS && -n $EXPECT_ARGS ]] || die "REQUESTS=custom needs REQUEST_ARGS and EXPECT_ARGS" ;;
    *) die "unknown request '$r' (worst, denied, skipped, custom)" ;;
  esac
done
[[ -n ${REQUESTS// /} ]] || die "REQUESTS is empty"

# ---------------------------------------------------------------------------------------------
# Build, processes, cleanup.

bench_build
for b in "$CELGATE_BIN" "$BIN/examples/floor" "$BIN/examples/make_request" "$BIN/examples/check_once" $BASELINE_BIN; do
  [[ -x $b ]] || die "$b was not built"
done

bench_workdir celgate-load
bench_ports_free "$FLOOR_ADDR" "$GRPC_ADDR" "$HTTP_ADDR"
[[ -z $BASELINE_BIN ]] || bench_ports_free "$BASELINE_GRPC_ADDR" "$BASELINE_HTTP_ADDR"

echo "== starting floor on $FLOOR_ADDR" >&2
"$BIN/examples/floor" --addr "$FLOOR_ADDR" >"$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
BENCH_PIDS+=("$FLOOR_PID")

echo "== starting celgate serve --policies $POLICIES on $GRPC_ADDR (http $HTTP_ADDR)" >&2
# shellcheck disable=SC2086
"$CELGATE_BIN" serve --policies "$POLICIES" --grpc-addr "$GRPC_ADDR" --http-addr "$HTTP_ADDR" \
  $CELGATE_ARGS >"$WORK/celgate.log" 2>&1 &
CELGATE_PID=$!
BENCH_PIDS+=("$CELGATE_PID")
BASELINE_PID=""
if [[ -n $BASELINE_BIN ]]; then
  echo "== starting the baseline $BASELINE_BIN on $BASELINE_GRPC_ADDR (http $BASELINE_HTTP_ADDR)" >&2
  # shellcheck disable=SC2086
  "$BASELINE_BIN" serve --policies "$POLICIES" --grpc-addr "$BASELINE_GRPC_ADDR" \
    --http-addr "$BASELINE_HTTP_ADDR" $BASELINE_ARGS >"$WORK/baseline.log" 2>&1 &
  BASELINE_PID=$!
  BENCH_PIDS+=("$BASELINE_PID")
fi

# ready_at HTTP_ADDR GRPC_ADDR PID LOG NAME: waits for a celgate to answer /readyz.
ready_at() {
  local _
  for _ in $(seq 1 300); do
    kill -0 "$3" 2>/dev/null || { cat "$4" >&2; die "$5 exited during start-up"; }
    kill -0 "$FLOOR_PID" 2>/dev/null || { cat "$WORK/floor.log" >&2; die "floor exited during start-up"; }
    if curl -sf "http://$1/readyz" >/dev/null 2>&1 && port_in_use "$FLOOR_ADDR" && port_in_use "$2"; then
      return 0
    fi
    sleep 0.1
  done
  tail -n 50 "$4" >&2
  die "$5 not ready after 30s (GET http://$1/readyz)"
}
ready_at "$HTTP_ADDR" "$GRPC_ADDR" "$CELGATE_PID" "$WORK/celgate.log" celgate
[[ -z $BASELINE_PID ]] || ready_at "$BASELINE_HTTP_ADDR" "$BASELINE_GRPC_ADDR" "$BASELINE_PID" "$WORK/baseline.log" baseline

# ---------------------------------------------------------------------------------------------
# Requests and the decision check.

for r in $REQUESTS; do
  mapfile -t args < <(request_args "$r")
  "$BIN/examples/make_request" --out "$WORK/$r.bin" "${args[@]}" 2>/dev/null \
    || die "make_request failed for '$r'"
done

check_decisions() { # $1: when ("before" / "after")
  local r out
  for r in $REQUESTS; do
    mapfile -t exp < <(expect_args "$r")
    if ! out=$("$BIN/examples/check_once" --addr "$FLOOR_ADDR" --file "$WORK/$r.bin" --expect-allowed 2>&1); then
      die "floor answered '$r' unexpectedly ($1 the runs): $out"
    fi
    if ! out=$("$BIN/examples/check_once" --addr "$GRPC_ADDR" --file "$WORK/$r.bin" "${exp[@]}" 2>&1); then
      echo "$out" >&2
      tail -n 20 "$WORK/celgate.log" >&2
      die "celgate's answer to '$r' is not the decision to be measured ($1 the runs)"
    fi
    if [[ -n $BASELINE_PID ]] && ! out=$("$BIN/examples/check_once" --addr "$BASELINE_GRPC_ADDR" --file "$WORK/$r.bin" "${exp[@]}" 2>&1); then
      echo "$out" >&2
      tail -n 20 "$WORK/baseline.log" >&2
      die "the baseline's answer to '$r' is not the decision to be measured ($1 the runs)"
    fi
    printf '  %-8s %-6s celgate: %s\n' "$r" "$1" "$(head -n1 <<<"$out")" >&2
  done
}

echo "== decisions" >&2
check_decisions before

# ---------------------------------------------------------------------------------------------
# Load.

# CPU time (user + system) the process $1 has used, in microseconds.
cpu_us() {
  local ticks
  ticks=$(awk '{ print $14 + $15 }' "/proc/$1/stat") || die "cannot read /proc/$1/stat"
  echo $((ticks * 1000000 / CLK_TCK))
}
CLK_TCK=$(getconf CLK_TCK)

# h2load against $1 (host:port) with file $2 for $3 seconds; prints req/s. With a process id
# $4, prints "req/s cpu" instead, cpu being that process's CPU time per request in
# microseconds over the run (what the server spent, whatever h2load got of the machine).
h2() {
  local addr=$1 file=$2 secs=$3 pid=${4:-} out rps cpu0=""
  [[ -n $pid ]] && cpu0=$(cpu_us "$pid")
  out=$(h2load -D "$secs" -c "$CONNS" -m "$STREAMS" -t 1 -d "$file" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$addr$CHECK_PATH" 2>&1) || { echo "$out" >&2; die "h2load failed against $addr"; }
  rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  [[ -n $rps ]] || { echo "$out" >&2; die "could not parse h2load output for $addr"; }
  # Every request must have completed with HTTP 200; a non-zero failed/errored count or any
  # non-2xx means we measured something else.
  local failed errored non2xx
  failed=$(sed -n 's/^requests: .* \([0-9]*\) failed.*/\1/p' <<<"$out")
  errored=$(sed -n 's/^requests: .* \([0-9]*\) errored.*/\1/p' <<<"$out")
  non2xx=$(sed -n 's/^status codes: [0-9]* 2xx, \([0-9]*\) 3xx, \([0-9]*\) 4xx, \([0-9]*\) 5xx.*/\1 \2 \3/p' <<<"$out")
  if [[ ${failed:-x} != 0 || ${errored:-x} != 0 || $non2xx != "0 0 0" ]]; then
    echo "$out" >&2
    die "h2load against $addr: failed=$failed errored=$errored non-2xx(3xx 4xx 5xx)=$non2xx"
  fi
  if [[ -n $pid ]]; then
    local done cpu1
    cpu1=$(cpu_us "$pid")
    done=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' <<<"$out")
    [[ ${done:-0} -gt 0 ]] || { echo "$out" >&2; die "no request succeeded against $addr"; }
    rps="$rps $(awk -v c=$((cpu1 - cpu0)) -v n="$done" 'BEGIN { printf "%.2f", c / n }')"
  fi
  echo "$rps"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) printf "%.4f\n", v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

if [[ $WARMUP != 0 ]]; then
  echo "== warm-up (${WARMUP}s each, not counted)" >&2
  for r in $REQUESTS; do
    h2 "$FLOOR_ADDR" "$WORK/$r.bin" "$WARMUP" >/dev/null
    h2 "$GRPC_ADDR" "$WORK/$r.bin" "$WARMUP" >/dev/null
    [[ -z $BASELINE_PID ]] || h2 "$BASELINE_GRPC_ADDR" "$WORK/$r.bin" "$WARMUP" >/dev/null
  done
fi

RESULTS=$WORK/results.tsv
: >"$RESULTS"
echo "== measuring: $ROUNDS round(s) x ${DURATION}s, h2load -c $CONNS -m $STREAMS -t 1, alternating floor/celgate" >&2
for round in $(seq 1 "$ROUNDS"); do
  for r in $REQUESTS; do
    if [[ -z $BASELINE_PID ]]; then
      fr=$(h2 "$FLOOR_ADDR" "$WORK/$r.bin" "$DURATION" "$FLOOR_PID")
      cr=$(h2 "$GRPC_ADDR" "$WORK/$r.bin" "$DURATION" "$CELGATE_PID")
      br="0 0"
    elif ((round % 2)); then
      fr=$(h2 "$FLOOR_ADDR" "$WORK/$r.bin" "$DURATION" "$FLOOR_PID")
      cr=$(h2 "$GRPC_ADDR" "$WORK/$r.bin" "$DURATION" "$CELGATE_PID")
      br=$(h2 "$BASELINE_GRPC_ADDR" "$WORK/$r.bin" "$DURATION" "$BASELINE_PID")
    else
      br=$(h2 "$BASELINE_GRPC_ADDR" "$WORK/$r.bin" "$DURATION" "$BASELINE_PID")
      cr=$(h2 "$GRPC_ADDR" "$WORK/$r.bin" "$DURATION" "$CELGATE_PID")
      fr=$(h2 "$FLOOR_ADDR" "$WORK/$r.bin" "$DURATION" "$FLOOR_PID")
    fi
    read -r f fcpu <<<"$fr"
    read -r c ccpu <<<"$cr"
    read -r b bcpu <<<"$br"
    ratio=$(awk -v c="$c" -v f="$f" 'BEGIN { printf "%.4f", c / f }')
    cratio=$(awk -v c="$ccpu" -v f="$fcpu" 'BEGIN { printf "%.4f", f / c }')
    bratio=$(awk -v c="$c" -v b="$b" 'BEGIN { if (b > 0) printf "%.4f", c / b; else print "-" }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$round" "$f" "$c" "$ratio" \
      "$fcpu" "$ccpu" "$cratio" "$b" "$bcpu" "$bratio" >>"$RESULTS"
    printf '  round %d %-8s floor %10.0f req/s   celgate %10.0f req/s   ratio %s   (CPU/request %s / %s us)\n' \
      "$round" "$r" "$f" "$c" "$ratio" "$fcpu" "$ccpu" >&2
    [[ -z $BASELINE_PID ]] || printf '  round %d %-8s baseline %10.0f req/s   celgate/baseline %s   (CPU/request %s us)\n' \
      "$round" "$r" "$b" "$bratio" "$bcpu" >&2
  done
done

echo "== decisions again" >&2
check_decisions after

RSS_KB=$(awk '/^VmRSS:/ { print $2 }' "/proc/$CELGATE_PID/status" 2>/dev/null || echo "?")
HWM_KB=$(awk '/^VmHWM:/ { print $2 }' "/proc/$CELGATE_PID/status" 2>/dev/null || echo "?")

# ---------------------------------------------------------------------------------------------
# Report.

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "no-commit")
DIRTY=$(git status --porcelain 2>/dev/null | grep -q . && echo "+dirty" || true)
echo
echo "celgate load benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $COMMIT$DIRTY"
echo "machine: $(nproc) cpus, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
echo "policies: $POLICIES ($(find "$POLICIES" -type f \( -name '*.yaml' -o -name '*.yml' -o -name '*.json' \) | wc -l) files)"
echo "h2load -D $DURATION -c $CONNS -m $STREAMS -t 1; $ROUNDS alternating round(s)"
echo
printf '%-8s %5s %14s %14s %8s %12s %12s %9s\n' request round "floor req/s" "celgate req/s" ratio \
  "floor us/req" "celgate us/req" "cpu f/c"
while IFS=$'\t' read -r r round f c ratio fcpu ccpu cratio _; do
  printf '%-8s %5s %14.0f %14.0f %8s %12s %12s %9s\n' "$r" "$round" "$f" "$c" "$ratio" "$fcpu" "$ccpu" "$cratio"
done <"$RESULTS"
echo
printf '%-8s %14s %14s %18s\n' request "median floor" "median celgate" "median ratio c/f"
for r in $REQUESTS; do
  mf=$(awk -F'\t' -v r="$r" '$1 == r { print $3 }' "$RESULTS" | median)
  mc=$(awk -F'\t' -v r="$r" '$1 == r { print $4 }' "$RESULTS" | median)
  mr=$(awk -F'\t' -v r="$r" '$1 == r { print $5 }' "$RESULTS" | median)
  printf '%-8s %14.0f %14.0f %18s\n' "$r" "$mf" "$mc" "$mr"
done
echo
echo "CPU time of each server per request (user + system, /proc/<pid>/stat over each run), in"
echo "microseconds; f/c is floor over celgate. What each server spent per request, whatever share"
echo "of the cores h2load took; on a shared host it moves with the host's load as req/s does"
printf '%-8s %-8s %12s %14s %9s\n' cpu/req request "median floor" "median celgate" "f/c"
for r in $REQUESTS; do
  mf=$(awk -F'\t' -v r="$r" '$1 == r { print $6 }' "$RESULTS" | median)
  mc=$(awk -F'\t' -v r="$r" '$1 == r { print $7 }' "$RESULTS" | median)
  mr=$(awk -F'\t' -v r="$r" '$1 == r { print $8 }' "$RESULTS" | median)
  printf '%-8s %-8s %12.1f %14.1f %9s\n' cpu/req "$r" "$mf" "$mc" "$mr"
done
if [[ -n $BASELINE_PID ]]; then
  echo
  echo "baseline: $BASELINE_BIN $BASELINE_ARGS (same rounds; c/b is celgate over baseline, per round)"
  printf '%-8s %5s %14s %14s %8s %12s %12s\n' request round "baseline req/s" "celgate req/s" c/b \
    "base us/req" "celgate us/req"
  while IFS=$'\t' read -r r round _ c _ _ ccpu _ b bcpu bratio; do
    printf '%-8s %5s %14.0f %14.0f %8s %12s %12s\n' "$r" "$round" "$b" "$c" "$bratio" "$bcpu" "$ccpu"
  done <"$RESULTS"
  printf '%-8s %16s %16s %14s %16s\n' request "median c/b" "c/b range" "median b/floor" "median cpu b-c"
  for r in $REQUESTS; do
    mr=$(awk -F'\t' -v r="$r" '$1 == r { print $11 }' "$RESULTS" | median)
    range=$(awk -F'\t' -v r="$r" '$1 == r { print $11 }' "$RESULTS" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }')
    mbf=$(awk -F'\t' -v r="$r" '$1 == r { printf "%.4f\n", $9 / $3 }' "$RESULTS" | median)
    mdc=$(awk -F'\t' -v r="$r" '$1 == r { printf "%.2f\n", $10 - $7 }' "$RESULTS" | median)
    printf '%-8s %16s %16s %14s %16s\n' "$r" "$mr" "$range" "$mbf" "$mdc"
  done
fi
echo
echo "celgate RSS after load: ${RSS_KB} kB (peak ${HWM_KB} kB)"
