#!/usr/bin/env bash
# Soak: a release `celgate serve` on loopback under gRPC Check load for
# DURATION seconds (default 600) while its policy set is swapped between two
# versions 10 times a second and a local JWKS issuer rotates its signing key.
# Fails on any mixed answer (parts of both versions), wrong answer (parts of
# neither), gRPC error, valid token refused, forged token accepted, or RSS
# growth after warm-up. Stops by itself; everything stays on 127.0.0.1.
#
#   scripts/soak.sh [DURATION_S] [-- extra options of examples/soak.rs]
#
# e.g. scripts/soak.sh 30; scripts/soak.sh 600 -- --concurrency 16 --rss-growth-mib 16
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-600}"
case "$duration" in '' | *[!0-9]*) echo "usage: $0 [DURATION_S] [-- soak options]" >&2; exit 2 ;; esac
shift $(( $# > 0 ? 1 : 0 ))
[ "${1:-}" = "--" ] && shift

echo "==> building celgate and the soak driver (release)"
cargo build --release --locked --bin celgate --example soak

echo "==> soak for ${duration}s (commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
# The driver stops by itself after DURATION; the outer limit only guards
# against a hang of the driver itself.
exec timeout --signal=KILL "$((duration + 180))" \
  target/release/examples/soak --celgate target/release/celgate --duration-s "$duration" "$@"
