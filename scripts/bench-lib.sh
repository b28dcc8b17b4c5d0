# shellcheck shell=bash
# Shared by the benchmark scripts (benches/load.sh, benches/load-jwt.sh,
# benches/shadow.sh, scripts/bench-tls.sh, ...) and scripts/pgo-build.sh:
# sourced, never run. The caller defines `die`.

# Processes the script started, stopped on exit.
BENCH_PIDS=()

# bench_workdir NAME: sets WORK to a fresh temporary folder named after NAME.
# On exit every process in BENCH_PIDS is stopped and waited for; WORK is
# removed after a success and kept (and named) after a failure.
bench_workdir() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  local rc=$? pid
  for pid in "${BENCH_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${BENCH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $rc -ne 0 ]]; then
    echo "$(basename "$0"): failed; logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}

# port_in_use HOST:PORT: whether something accepts connections there.
port_in_use() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

# bench_ports_free ADDR...: dies unless every HOST:PORT is free.
bench_ports_free() {
  local a
  for a in "$@"; do
    if port_in_use "$a"; then
      die "$a is already in use: stop whatever listens there first"
    fi
  done
}

# bench_bin: which build a benchmark runs. PGO=1: the profile-guided one that
# scripts/pgo-build.sh makes in $PGO_DIR/use/release (PGO_DIR default
# target/pgo); PGO=0 (the default): target/release. Sets PGO, and BIN unless
# the caller's environment gives it.
bench_bin() {
  PGO=${PGO:-0}
  case $PGO in
    1) BIN=${BIN:-${PGO_DIR:-target/pgo}/use/release} ;;
    0) BIN=${BIN:-target/release} ;;
    *) die "PGO must be 0 or 1" ;;
  esac
}

# bench_build: makes the build bench_bin chose, unless NO_BUILD is set.
bench_build() {
  if [[ -n ${NO_BUILD:-} ]]; then
    return
  elif [[ $PGO == 1 ]]; then
    echo "== scripts/pgo-build.sh (about 40 minutes on two cores)" >&2
    scripts/pgo-build.sh
  else
    echo "== cargo build --release --examples --bins" >&2
    cargo build --release --examples --bins >&2
  fi
}

# bench_jwks_loopback JWKS_FILE JWKS_URL PORT POLICY_DIR OUT_DIR COUNT: copies
# the policies of POLICY_DIR into OUT_DIR with the https JWKS_URL they fetch
# replaced by the same path on http://127.0.0.1:PORT, and serves JWKS_FILE
# there (python3 -m http.server from $WORK, stopped on exit; JWKS_PID). Dies
# unless exactly COUNT of the copies name the loopback URL, or the server does
# not start. Run the policies with --jwks-allowed-urls http://127.0.0.1:PORT/.
bench_jwks_loopback() {
  local file=$1 url=$2 port=$3 from=$4 to=$5 count=$6 path f named _
  path=/${url#https://*/}
  local loopback=http://127.0.0.1:$port$path
  bench_ports_free "127.0.0.1:$port"
  mkdir -p "$WORK/jwks-root$(dirname "$path")" "$to"
  cp "$file" "$WORK/jwks-root$path"
  for f in "$from"/*.yaml; do
    sed "s|$url|$loopback|g" "$f" >"$to/$(basename "$f")"
  done
  named=$(grep -l -F "$loopback" "$to"/*.yaml | wc -l) || true
  [[ $named -eq $count ]] || die "$named of the policies in $from name $url, not $count"
  (cd "$WORK/jwks-root" && exec python3 -m http.server "$port" --bind 127.0.0.1) >"$WORK/jwks.log" 2>&1 &
  JWKS_PID=$!
  BENCH_PIDS+=("$JWKS_PID")
  for _ in $(seq 1 100); do port_in_use "127.0.0.1:$port" && return 0; sleep 0.1; done
  tail -n 30 "$WORK/jwks.log" >&2
  die "the JWKS server on 127.0.0.1:$port did not start"
}
