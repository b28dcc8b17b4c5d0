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
bench_bin
export BIN PGO
bench_build
[[ -x $BIN/examples/mint_token ]] || die "$BIN/examples/mint_token was not built"

bench_workdir celgate-load-jwt
# Both policies fetch the issuer's JWKS.
bench_jwks_loopback examples/identity/keys/jwks.json https://issuer.example.com/.well-known/jwks.json \
  "$JWKS_PORT" examples/identity/policies "$WORK/policies" 2

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
