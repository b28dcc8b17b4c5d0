# shellcheck shell=bash
# Shared by the benchmark scripts (benches/load.sh, benches/shadow.sh,
# scripts/bench-tls.sh): sourced, never run. The caller defines `die`.

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
