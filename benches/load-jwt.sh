#!/usr/bin/env bash
# Load benchmark for the identity case: benches/load.sh with the two policies of
# examples/identity (authenticate: an RS256 bearer token verified against the issuer's JWKS;
# roles: the token's roles decide the method), one reader token, GET /api/orders. Expected
# answer, asserted before and after the runs: allowed, x-user: alice, authorization removed.
#
# The policies are copied with their JWKS URL pointed at a loopback server of
# examples/identity/keys (python3 -m http.server), allowed with --jwks-allowed-urls. Both
# policies decode the token: the first decode of a token verifies it, the rest are cache hits.
#
# Usage:   bash benches/load-jwt.sh
# Env:     everything benches/load.sh reads (ROUNDS, DURATION, PGO, BIN, NO_BUILD,
#          BASELINE_BIN, CELGATE_ARGS, BASELINE_ARGS, ...), except POLICIES and REQUESTS;
#          JWKS_PORT=8099
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

die() { echo "load-jwt.sh: $*" >&2; exit 1; }

JWKS_PORT=${JWKS_PORT:-8099}
PGO=${PGO:-0}
case $PGO in
  1) BIN=${BIN:-${PGO_DIR:-target/pgo}/use/release} ;;
  0) BIN=${BIN:-target/release} ;;
  *) die "PGO must be 0 or 1" ;;
esac
export BIN PGO

if [[ -n ${NO_BUILD:-} ]]; then
  :
elif [[ $PGO == 1 ]]; then
  scripts/pgo-build.sh
else
  cargo build --release --examples --bins >&2
fi
[[ -x $BIN/examples/mint_token ]] || die "$BIN/examples/mint_token was not built"

bench_workdir celgate-load-jwt
bench_ports_free "127.0.0.1:$JWKS_PORT"

ISSUER_JWKS=https://issuer.example.com/.well-known/jwks.json
mkdir -p "$WORK/keys/.well-known" "$WORK/policies"
cp examples/identity/keys/jwks.json "$WORK/keys/.well-known/jwks.json"
for f in examples/identity/policies/*.yaml; do
  sed "s|$ISSUER_JWKS|http://127.0.0.1:$JWKS_PORT/.well-known/jwks.json|g" "$f" >"$WORK/policies/$(basename "$f")"
done
[[ $(grep -l "127.0.0.1:$JWKS_PORT" "$WORK"/policies/*.yaml | wc -l) -eq 2 ]] \
  || die "examples/identity/policies no longer name $ISSUER_JWKS in both policies"
(cd "$WORK/keys" && exec python3 -m http.server "$JWKS_PORT" --bind 127.0.0.1) >"$WORK/jwks.log" 2>&1 &
BENCH_PIDS+=("$!")
for _ in $(seq 1 100); do port_in_use "127.0.0.1:$JWKS_PORT" && break; sleep 0.1; done
port_in_use "127.0.0.1:$JWKS_PORT" || die "the JWKS server did not start"

TOKEN=$("$BIN/examples/mint_token" <<'EOF'
{key: examples/identity/keys/issuer.pem, kid: issuer-1, expiresIn: 2h, claims: {iss: "https://issuer.example.com/", aud: orders-api, sub: alice, roles: [reader]}}
EOF
) || die "mint_token failed"

ALLOW="--jwks-allowed-urls http://127.0.0.1:$JWKS_PORT/"
NO_BUILD=1 POLICIES="$WORK/policies" REQUESTS=custom \
  REQUEST_ARGS="--method GET --path /api/orders --host api.example.com --header 'authorization=Bearer $TOKEN'" \
  EXPECT_ARGS="--expect-allowed --expect-header x-user=alice --expect-remove authorization" \
  CELGATE_ARGS="$ALLOW ${CELGATE_ARGS:-}" BASELINE_ARGS="$ALLOW ${BASELINE_ARGS:-}" \
  bash benches/load.sh
