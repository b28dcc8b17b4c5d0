#!/usr/bin/env bash
# Runs the fuzz targets of tests/fuzz.rs (CheckRequest bytes → decision,
# policy documents → load/validate, JSON-RPC bodies → mcp.Parse) for a set
# time, in a release build, all three at once.
#
#   scripts/fuzz.sh [SECONDS]     (default 600 per target)
#
# Environment: FUZZ_SEED (default: random; printed, so a run can be
# replayed), FUZZ_CASES (cases per round, default 2000; each round uses the
# next seed). Prints the cases run per target and exits non-zero on a
# failure, with the shrunk input and its seed in the log. Failing cases are
# also kept in tests/fuzz.proptest-regressions, which every later run
# (`cargo test --test fuzz` included) replays first: commit it with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-600}"
case "$seconds" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
seed="${FUZZ_SEED:-$(( ($(date +%s) * 1000003 + $$) % 4294967296 ))}"
cases="${FUZZ_CASES:-2000}"
mkdir -p target/fuzz
log="target/fuzz/fuzz-$(date -u +%Y%m%dT%H%M%SZ)-seed$seed.log"

echo "==> building (release)"
# The test binary is run directly, so no cargo lock is held while it runs.
bin=$(cargo test --release --locked --test fuzz --no-run --message-format=json \
  | grep '"kind":\["test"\]' | grep '"name":"fuzz"' \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "cannot find the fuzz test binary" >&2; exit 1; }

echo "==> fuzzing for ${seconds}s per target, FUZZ_SEED=$seed, FUZZ_CASES=$cases; log: $log"
started=$(date +%s)
status=0
# A target that stops answering is a hang: the run is cut off well after
# its time is up, and that counts as a failure.
FUZZ_SECONDS="$seconds" FUZZ_SEED="$seed" FUZZ_CASES="$cases" \
  timeout --signal=KILL "$((seconds + 900))" \
  "$bin" --nocapture --test-threads 3 >"$log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - started ))

echo "==> results (${elapsed}s)"
grep -E '^fuzz-(result|stats) ' "$log" || true
awk '/^fuzz-result /{for(i=1;i<=NF;i++) if($i ~ /^cases=/){split($i,a,"="); s+=a[2]}} END{print "total cases: " s+0}' "$log"
if [ "$status" -ne 0 ]; then
  echo "==> FAILED (exit $status); FUZZ_SEED=$seed. Failure:" >&2
  grep -E -A40 'fuzz target .* (failed|aborted)|panicked at' "$log" | head -80 >&2 || tail -40 "$log" >&2
  if [ -f tests/fuzz.proptest-regressions ]; then
    echo "failing cases kept in tests/fuzz.proptest-regressions (replayed first by every run)" >&2
  fi
  [ "$status" -eq 137 ] && echo "the run was killed after $((seconds + 900))s: a hang" >&2
  exit 1
fi
echo "==> 0 failures"
