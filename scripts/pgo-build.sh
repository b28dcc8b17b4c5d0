#!/usr/bin/env bash
# Builds celgate with profile-guided optimisation (PGO): an instrumented build is run on a
# training workload, its profile is merged, and the release build is made again with the
# profile, so the compiler lays out the code that requests run together and out of the way of
# the code they never run. On a two-core machine this takes about 40 minutes (two release
# builds); the result is a binary that answers the same, faster (BENCHMARKS.md, "PGO").
#
# The training workload is the repository's own, and not the benchmarks' policies or requests:
#   - every test suite (`celgate test` on tests/cases, policies/ and examples/) but the identity
#     example's, several times over: every library, the test runner's minted tokens, Envoy and
#     HTTP mode;
#   - `celgate serve` with the bundled policies/ under gRPC load (h2load), allowed and denied
#     requests, and the same requests over the plain-HTTP authorization listener
#     (--authz-http-addr: /envoy/... over HTTP/1.1, /forward-auth);
#   - `celgate serve` with the OAuth variant of examples/mcp-gateway under gRPC load: ES256
#     tokens verified against a JWKS served on loopback, MCP bodies parsed, scopes checked;
#   - the no-op `floor` server of benches/load.sh under the same gRPC load, so that
#     `PGO=1 bash benches/load.sh` compares a PGO build with a PGO floor.
# benches/policies (benches/load.sh's policy set) and examples/identity (benches/load-jwt.sh's)
# are deliberately left out, so that what the benchmarks measure is not what the profile saw.
#
# Usage:   scripts/pgo-build.sh
# Output:  $PGO_DIR/use/release/celgate, and the examples benches/load.sh needs (floor,
#          make_request, check_once, mint_token) built the same way.
# Needs:   h2load (nghttp2-client), python3, curl, and llvm-profdata of the LLVM that rustc
#          uses (`rustc -vV`; on Debian bookworm with rustc 1.95: apt-get install llvm-22).
# Env:
#   PGO_DIR=target/pgo     where the two builds, the raw profiles and the merged profile go
#   TRAIN_SECONDS=3        seconds of h2load per training request
#   SUITE_ROUNDS=5         passes over every test suite
#   LLVM_PROFDATA=         the llvm-profdata to use (default: found from rustc's LLVM version)
#   TRAIN_CONNS=16 TRAIN_STREAMS=16   h2load -c / -m during training
#   TRAIN_ONLY=DIR         only run the training, with the binaries already in DIR (celgate and
#                          examples/{floor,make_request,check_once,mint_token}): no build, no
#                          profile. tests/pgo_training.rs runs it so, on the debug build, to keep
#                          the training's requests and their expected answers true.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "pgo-build.sh: $*" >&2; exit 1; }

# Paths given relative to where the script was started from.
TRAIN_ONLY=${TRAIN_ONLY:-}
if [[ -n $TRAIN_ONLY ]]; then
  TRAIN_ONLY=$(cd "$TRAIN_ONLY" 2>/dev/null && pwd) || die "TRAIN_ONLY: no directory ${TRAIN_ONLY}"
fi
PGO_DIR=${PGO_DIR:-$ROOT/target/pgo}
mkdir -p "$PGO_DIR"
PGO_DIR=$(cd "$PGO_DIR" && pwd)

cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

RAW=$PGO_DIR/raw
PROFILE=$PGO_DIR/celgate.profdata
TRAIN_SECONDS=${TRAIN_SECONDS:-3}
SUITE_ROUNDS=${SUITE_ROUNDS:-5}
CONNS=${TRAIN_CONNS:-16}
STREAMS=${TRAIN_STREAMS:-16}
TARGETS=(--bin celgate --example floor --example make_request --example check_once --example mint_token)

[[ $TRAIN_SECONDS =~ ^[1-9][0-9]*$ ]] || die "TRAIN_SECONDS must be a positive integer"
[[ $SUITE_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "SUITE_ROUNDS must be a positive integer"
for tool in h2load python3 curl cargo rustc; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

# llvm-profdata must read the format of the LLVM that rustc uses: same major version.
find_profdata() {
  local major sysroot host candidate
  major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  [[ -n $major ]] || die "cannot read rustc's LLVM version from 'rustc -vV'"
  if [[ -n ${LLVM_PROFDATA:-} ]]; then
    echo "$LLVM_PROFDATA"
    return
  fi
  sysroot=$(rustc --print sysroot)
  host=$(rustc -vV | sed -n 's/^host: //p')
  local version
  for candidate in "llvm-profdata-$major" "$sysroot/lib/rustlib/$host/bin/llvm-profdata" llvm-profdata; do
    if command -v "$candidate" >/dev/null && version=$("$candidate" --version 2>/dev/null) \
      && [[ $version == *"LLVM version $major."* ]]; then
      echo "$candidate"
      return
    fi
  done
  die "no llvm-profdata for LLVM $major (rustc's): install llvm-$major (Debian) or the rustup component llvm-tools, or set LLVM_PROFDATA"
}

# ---------------------------------------------------------------------------------------------
# 1. The instrumented build: every run of its binaries writes a raw profile into $RAW.

if [[ -n $TRAIN_ONLY ]]; then
  GEN=$TRAIN_ONLY
  for b in celgate examples/floor examples/make_request examples/check_once examples/mint_token; do
    [[ -x $GEN/$b ]] || die "TRAIN_ONLY: $GEN/$b does not exist"
  done
else
  PROFDATA=$(find_profdata)
  echo "== instrumented build ($PGO_DIR/gen)" >&2
  RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$RAW" \
    cargo build --release --locked "${TARGETS[@]}" --target-dir "$PGO_DIR/gen" >&2
  # Build scripts run during the build are instrumented too: only the training's profiles count.
  rm -rf "$RAW"
  GEN=$PGO_DIR/gen/release
fi

# ---------------------------------------------------------------------------------------------
# 2. Training.

bench_workdir celgate-pgo

# Every suite folder but examples/identity (the JWT load bench's policies).
SUITES=(tests/cases policies)
for d in examples/*/; do
  [[ $d == examples/identity/ ]] || SUITES+=("${d%/}")
done
echo "== training: every test suite, $SUITE_ROUNDS times" >&2
for _ in $(seq 1 "$SUITE_ROUNDS"); do
  "$GEN/celgate" test "${SUITES[@]}" >"$WORK/suites.log" 2>&1 \
    || { tail -n 30 "$WORK/suites.log" >&2; die "the test suites failed under the instrumented build"; }
done

GRPC=127.0.0.1:9591 HTTP=127.0.0.1:9592 AUTHZ=127.0.0.1:9593 FLOOR=127.0.0.1:9594
MCP_GRPC=127.0.0.1:9595 MCP_HTTP=127.0.0.1:9596 JWKS_PORT=9597
bench_ports_free "$GRPC" "$HTTP" "$AUTHZ" "$FLOOR" "$MCP_GRPC" "$MCP_HTTP"

# The OAuth MCP example with its JWKS URL pointed at a loopback server of its keys (the token
# and scopes policies fetch it).
bench_jwks_loopback examples/mcp-gateway/oauth/keys/jwks.json https://auth.example.test/.well-known/jwks.json \
  "$JWKS_PORT" examples/mcp-gateway/oauth/policies "$WORK/mcp-oauth" 2

"$GEN/examples/floor" --addr "$FLOOR" >"$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
BENCH_PIDS+=("$FLOOR_PID")
"$GEN/celgate" serve --policies policies --grpc-addr "$GRPC" --http-addr "$HTTP" \
  --authz-http-addr "$AUTHZ" >"$WORK/celgate.log" 2>&1 &
CELGATE_PID=$!
BENCH_PIDS+=("$CELGATE_PID")
"$GEN/celgate" serve --policies "$WORK/mcp-oauth" --grpc-addr "$MCP_GRPC" --http-addr "$MCP_HTTP" \
  --jwks-allowed-urls "http://127.0.0.1:$JWKS_PORT/" >"$WORK/mcp.log" 2>&1 &
MCP_PID=$!
BENCH_PIDS+=("$MCP_PID")

ready() { # ADDR PID LOG
  local _
  for _ in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || { tail -n 30 "$3" >&2; die "a training server exited during start-up"; }
    curl -sf "http://$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -n 30 "$3" >&2
  die "a training server was not ready after 30 s"
}
ready "$HTTP" "$CELGATE_PID" "$WORK/celgate.log"
ready "$MCP_HTTP" "$MCP_PID" "$WORK/mcp.log"
for _ in $(seq 1 100); do port_in_use "$FLOOR" && break; sleep 0.1; done
port_in_use "$FLOOR" || { tail -n 30 "$WORK/floor.log" >&2; die "the floor did not start"; }

# request NAME EXPECT... -- MAKE_REQUEST_ARGS...: writes $WORK/NAME.bin and checks the answer
# celgate on $ADDR gives it (a training run that decides wrongly would train the wrong path).
request() {
  local name=$1 out
  shift
  local expect=()
  while [[ $1 != -- ]]; do expect+=("$1"); shift; done
  shift
  "$GEN/examples/make_request" --out "$WORK/$name.bin" "$@" 2>/dev/null || die "make_request failed for $name"
  out=$("$GEN/examples/check_once" --addr "$ADDR" --file "$WORK/$name.bin" "${expect[@]}" 2>&1) \
    || { echo "$out" >&2; die "training request $name was not answered as expected"; }
}

# answered ADDR: dies unless the last h2load run had answers (of any status).
answered() {
  grep -Eq '^requests: [0-9]+ total, [0-9]+ started, [1-9][0-9]* done' "$WORK/h2load.log" \
    || { cat "$WORK/h2load.log" >&2; die "no answer from $1"; }
}

# grpc_load ADDR NAME: h2load's gRPC load with $WORK/NAME.bin. Answers are not counted here.
grpc_load() {
  h2load -D "$TRAIN_SECONDS" -c "$CONNS" -m "$STREAMS" -t 1 -d "$WORK/$2.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$1/envoy.service.auth.v3.Authorization/Check" >"$WORK/h2load.log" 2>&1 \
    || { cat "$WORK/h2load.log" >&2; die "h2load failed against $1"; }
  answered "$1"
}

echo "== training: bundled policies over gRPC, ${TRAIN_SECONDS}s per request" >&2
ADDR=$GRPC
request key-allowed --expect-allowed --expect-header x-user=bob --expect-remove x-api-key -- \
  --method POST --path /api/orders --host api.example.com --header x-api-key=demo-key-bob \
  --header 'user-agent=curl/8.5.0' --header accept=application/json
request public --expect-allowed -- --method GET --path '/public/logo.png?v=2' --host www.example.com
request unlisted --expect-denied 404 -- --method GET --path /admin --host api.example.com
request no-key --expect-denied 401 -- --method GET --path /api/orders --host api.example.com
request bad-key --expect-denied 403 -- --method GET --path /api/orders --host api.example.com \
  --header x-api-key=guess
for r in key-allowed public unlisted no-key bad-key; do grpc_load "$GRPC" "$r"; done

echo "== training: the floor over gRPC" >&2
grpc_load "$FLOOR" key-allowed

echo "== training: bundled policies over plain HTTP (--authz-http-addr)" >&2
http_load() { # h2load ARGS...: HTTP/1.1 load, answers not counted
  h2load --h1 -D "$TRAIN_SECONDS" -c "$CONNS" -t 1 "$@" >"$WORK/h2load.log" 2>&1 \
    || { cat "$WORK/h2load.log" >&2; die "h2load failed against $AUTHZ"; }
  answered "$AUTHZ"
}
# http_status WANT CURL_ARGS...: dies unless the listener answers CURL_ARGS with status WANT.
http_status() {
  local want=$1 got
  shift
  got=$(curl -s -o /dev/null -w '%{http_code}' "$@") || true
  [[ $got == "$want" ]] || die "the HTTP authorization listener answered $got, not $want, to: $*"
}
FORWARDED=(-H 'x-forwarded-method: GET' -H 'x-forwarded-uri: /api/orders' -H 'x-forwarded-host: api.example.com'
  -H 'x-forwarded-proto: https' -H 'x-api-key: demo-key-bob')
http_status 200 -H 'x-api-key: demo-key-bob' "http://$AUTHZ/envoy/api/orders"
http_status 404 "http://$AUTHZ/envoy/admin"
http_status 200 "${FORWARDED[@]}" "http://$AUTHZ/forward-auth"
http_load -H 'x-api-key: demo-key-bob' "http://$AUTHZ/envoy/api/orders"
http_load "http://$AUTHZ/envoy/admin"
http_load "${FORWARDED[@]}" "http://$AUTHZ/forward-auth"

echo "== training: the OAuth MCP gateway over gRPC (ES256 tokens, JWKS on loopback)" >&2
ADDR=$MCP_GRPC
mint() { # SUB SCOPE: an ES256 token for the example's server
  (cd examples/mcp-gateway/oauth && "$GEN/examples/mint_token" <<EOF
{key: keys/auth-server.pem, alg: ES256, kid: auth-1, expiresIn: 1h, claims: {iss: "https://auth.example.test", aud: "https://mcp.example.test/mcp", sub: $1, scope: "$2"}}
EOF
  ) || die "mint_token failed"
}
READER=$(mint ann "openid repo:read")
WRITER=$(mint bob "repo:read repo:write")
request mcp-init --expect-allowed --expect-header x-user=ann -- --method POST --path /mcp \
  --host mcp.example.test --header "authorization=Bearer $READER" --header content-type=application/json \
  --body '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"cli","version":"1"}}}'
request mcp-search --expect-allowed --expect-header x-user=ann -- --method POST --path /mcp \
  --host mcp.example.test --header "authorization=Bearer $READER" --header content-type=application/json \
  --body '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"search","arguments":{"query":"crash","limit":20}}}'
request mcp-issue --expect-allowed --expect-header x-user=bob -- --method POST --path /mcp \
  --host mcp.example.test --header "authorization=Bearer $WRITER" --header content-type=application/json \
  --body '{"jsonrpc":"2.0","id":"c-7","method":"tools/call","params":{"name":"create_issue","arguments":{"title":"flaky test","labels":["ci","bug"]}}}'
request mcp-scope --expect-denied 403 -- --method POST --path /mcp \
  --host mcp.example.test --header "authorization=Bearer $READER" --header content-type=application/json \
  --body '{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"delete_repo","arguments":{"repo":"x"}}}'
request mcp-no-token --expect-denied 401 -- --method POST --path /mcp --host mcp.example.test \
  --body '{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
for r in mcp-init mcp-search mcp-issue mcp-scope mcp-no-token; do grpc_load "$MCP_GRPC" "$r"; done

# The profiles are written when the processes exit normally: celgate on SIGTERM, the floor on
# SIGINT (Ctrl-C). Each gets 30 s; the cleanup on exit stops whatever is left.
kill -INT "$FLOOR_PID" || die "the floor exited during the training (see $WORK)"
kill -TERM "$CELGATE_PID" "$MCP_PID" || die "a celgate exited during the training (see $WORK)"
exited() { # PID: gone, or a zombie not yet waited for
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  [[ ${stat%% *} == Z ]]
}
for pid in "$FLOOR_PID" "$CELGATE_PID" "$MCP_PID"; do
  for _ in $(seq 1 300); do exited "$pid" && break; sleep 0.1; done
  exited "$pid" || die "a training server did not exit within 30 s of its signal (see $WORK)"
  wait "$pid" || die "a training server did not exit cleanly (see $WORK)"
done
# The JWKS server is not needed for the rest (the build); nothing is left to stop on exit.
kill "$JWKS_PID" 2>/dev/null || true
wait "$JWKS_PID" 2>/dev/null || true
BENCH_PIDS=()

if [[ -n $TRAIN_ONLY ]]; then
  echo "== training done" >&2
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# 3. Merge, 4. the optimised build, checked on the test suites.

shopt -s nullglob
raws=("$RAW"/*.profraw)
[[ ${#raws[@]} -gt 0 ]] || die "the training wrote no profile into $RAW"
echo "== merging ${#raws[@]} raw profiles with $PROFDATA" >&2
"$PROFDATA" merge -o "$PROFILE" "${raws[@]}"

echo "== optimised build ($PGO_DIR/use)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PROFILE" \
  cargo build --release --locked "${TARGETS[@]}" --target-dir "$PGO_DIR/use" >&2
echo "== the optimised build on every test suite" >&2
"$PGO_DIR/use/release/celgate" test tests/cases policies examples >"$WORK/suites.log" 2>&1 \
  || { tail -n 30 "$WORK/suites.log" >&2; die "the test suites failed under the optimised build"; }
echo "== built $PGO_DIR/use/release/celgate" >&2
