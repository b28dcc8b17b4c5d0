#!/usr/bin/env bash
# Proxy benchmark: each proxy asking celgate over HTTP (--authz-http-addr) against the same proxy
# with no authorization at all, in front of the same upstream.
#
#   Envoy  ext_authz http_service (examples/envoy-http/envoy.yaml)  vs  Envoy, no ext_authz
#   nginx  auth_request           (examples/nginx/nginx.conf)       vs  nginx, no auth_request
#   Caddy  forward_auth           (examples/caddy/Caddyfile)        vs  Caddy, no forward_auth
#   nginx  auth_request to Kyverno's HTTP mode (examples/kyverno-http/nginx.conf, its input and
#          output expressions and policy)                            vs  nginx, no auth_request
#
# The configs with authorization are the shipped examples with their ports changed, so what is
# measured is what users paste. The upstream is an nginx answering 200 "ok" itself. The request
# is GET /api/orders with a known API key: allowed by the shipped policies (policies/), with
# x-user added upstream (Kyverno's HTTP mode: allowed by examples/kyverno-http/policy.yaml). Before measuring, that request and a denied one are sent through each
# proxy and the answers asserted (h2load only counts statuses).
#
# h2load (HTTP/1.1, -t 1) drives the two variants of one proxy ALTERNATELY (bare, with celgate,
# bare, ...) so drift on a noisy machine hits both alike. The number that counts is the ratio
# with-celgate / bare per proxy, measured side by side: never quote a lone req/s figure.
#
# Usage:   bash benches/proxies.sh
# Env:
#   PROXIES="envoy nginx caddy kyverno"   which proxies
#   ROUNDS=3 DURATION=5 WARMUP=1  alternating pairs, seconds per h2load run, warm-up seconds
#   CONNS=16                      h2load -c (HTTP/1.1: one request in flight per connection)
#   BASE_PORT=19400               the ports used are BASE_PORT .. BASE_PORT+12
#   ENVOY=.venv/bin/envoy NGINX=nginx CADDY=caddy
#   NO_BUILD=1                    skip `cargo build --release`
#   CELGATE_BIN=target/release/celgate
#   CELGATE_ARGS=""               extra arguments for `celgate serve`
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

PROXIES=${PROXIES:-envoy nginx caddy kyverno}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-16}
BASE_PORT=${BASE_PORT:-19400}
ENVOY=${ENVOY:-${CELGATE_ENVOY:-.venv/bin/envoy}}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
CADDY=${CADDY:-caddy}
CELGATE_BIN=${CELGATE_BIN:-target/release/celgate}
CELGATE_ARGS=${CELGATE_ARGS:-}

die() { echo "proxies.sh: $*" >&2; exit 1; }

command -v h2load >/dev/null || die "h2load not found (apt-get install nghttp2-client)"
command -v curl >/dev/null || die "curl not found"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
for p in $PROXIES; do
  case $p in
    envoy) [[ -x $ENVOY ]] || die "Envoy not found at $ENVOY (scripts/test.sh installs it)" ;;
    nginx | kyverno) ;;
    caddy) command -v "$CADDY" >/dev/null || die "caddy not found (apt-get install caddy)" ;;
    *) die "unknown proxy $p (envoy, nginx, caddy, kyverno)" ;;
  esac
done
# nginx is the upstream of every proxy.
command -v "$NGINX" >/dev/null || [[ -x $NGINX ]] || die "nginx not found (apt-get install nginx)"

port() { echo $((BASE_PORT + $1)); }
UPSTREAM=$(port 0) GRPC=$(port 1) HTTP=$(port 2) AUTHZ=$(port 3)
declare -A AUTH_PORT=([envoy]=$(port 4) [nginx]=$(port 5) [caddy]=$(port 6) [kyverno]=$(port 12))
# Kyverno's HTTP mode is measured against the same bare nginx as forward auth.
declare -A BARE_PORT=([envoy]=$(port 7) [nginx]=$(port 8) [caddy]=$(port 9) [kyverno]=$(port 8))
ADMIN_AUTH=$(port 10) ADMIN_BARE=$(port 11)

bench_workdir celgate-proxies
addrs=()
for i in $(seq 0 12); do addrs+=("127.0.0.1:$(port "$i")"); done
bench_ports_free "${addrs[@]}"

if [[ -z ${NO_BUILD:-} ]]; then
  echo "== cargo build --release" >&2
  cargo build --release --locked --quiet
fi

start() { # NAME COMMAND...: runs in the background, output in $WORK/NAME.log
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  BENCH_PIDS+=($!)
}

wait_status() { # URL STATUS [HEADER]: waits up to 15 s for URL to answer STATUS
  local url=$1 want=$2 header=${3:-x-bench: 1} got i
  for i in $(seq 150); do
    got=$(curl -s -o /dev/null -w '%{http_code}' -H "$header" "$url" || true)
    [[ $got == "$want" ]] && return 0
    sleep 0.1
  done
  die "$url answered $got, not $want (logs in $WORK)"
}

# The upstream: nginx answering 200 itself.
mkdir -p "$WORK/upstream"
cat >"$WORK/upstream/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path client_body; proxy_temp_path proxy; fastcgi_temp_path fastcgi;
  uwsgi_temp_path uwsgi; scgi_temp_path scgi;
  server { listen 127.0.0.1:$UPSTREAM; keepalive_requests 100000; location / { return 200 "ok\n"; } }
}
EOF
start upstream "$NGINX" -p "$WORK/upstream" -e stderr -c "$WORK/upstream/nginx.conf"

# One celgate for every proxy: the shipped Envoy-mode policies, and the Kyverno example's HTTP-mode
# policy with its input and output expressions (which only the listener's root uses).
# shellcheck disable=SC2086
start celgate "$CELGATE_BIN" serve --policies policies --policies examples/kyverno-http/policy.yaml \
  --input-expression "$(cat examples/kyverno-http/input.cel)" \
  --output-expression "$(cat examples/kyverno-http/output.cel)" --grpc-addr "127.0.0.1:$GRPC" \
  --http-addr "127.0.0.1:$HTTP" --authz-http-addr "127.0.0.1:$AUTHZ" --no-watch $CELGATE_ARGS
wait_status "http://127.0.0.1:$HTTP/readyz" 200
wait_status "http://127.0.0.1:$UPSTREAM/" 200

# The shipped example with its ports changed (listen, upstream, celgate, admin).
example() { # FILE LISTEN ADMIN
  sed -e "s/10000/$2/g" -e "s/8080/$UPSTREAM/g" -e "s/9193/$AUTHZ/g" -e "s/9901/$3/g" "$1"
}

start_envoy() {
  example examples/envoy-http/envoy.yaml "${AUTH_PORT[envoy]}" "$ADMIN_AUTH" >"$WORK/envoy-auth.yaml"
  cat >"$WORK/envoy-bare.yaml" <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $ADMIN_BARE } } }
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: 127.0.0.1, port_value: ${BARE_PORT[envoy]} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - { name: app, domains: ["*"], routes: [ { match: { prefix: "/" }, route: { cluster: upstream } } ] }
          http_filters:
          - { name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UPSTREAM } } } } ] } ]
EOF
  start envoy-auth "$ENVOY" -c "$WORK/envoy-auth.yaml" --concurrency 1 --base-id $((BASE_PORT + 1)) -l warning
  start envoy-bare "$ENVOY" -c "$WORK/envoy-bare.yaml" --concurrency 1 --base-id $((BASE_PORT + 2)) -l warning
}

start_kyverno() {
  mkdir -p "$WORK/kyverno-auth"
  example examples/kyverno-http/nginx.conf "${AUTH_PORT[kyverno]}" 0 |
    sed -e 's/worker_processes auto;/worker_processes 1;/' >"$WORK/kyverno-auth/nginx.conf"
  start kyverno-auth "$NGINX" -p "$WORK/kyverno-auth" -e stderr -c "$WORK/kyverno-auth/nginx.conf"
  # The bare nginx is forward auth's, started once for both.
  start_nginx bare
}

start_nginx() { # [bare]: only the bare one
  mkdir -p "$WORK/nginx-auth" "$WORK/nginx-bare"
  example examples/nginx/nginx.conf "${AUTH_PORT[nginx]}" 0 |
    sed -e 's/worker_processes auto;/worker_processes 1;/' >"$WORK/nginx-auth/nginx.conf"
  cat >"$WORK/nginx-bare/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path client_body; proxy_temp_path proxy; fastcgi_temp_path fastcgi;
  uwsgi_temp_path uwsgi; scgi_temp_path scgi;
  upstream app { server 127.0.0.1:$UPSTREAM; }
  server { listen 127.0.0.1:${BARE_PORT[nginx]}; location / { proxy_pass http://app; } }
}
EOF
  [[ ${1:-} == bare ]] ||
    start nginx-auth "$NGINX" -p "$WORK/nginx-auth" -e stderr -c "$WORK/nginx-auth/nginx.conf"
  if [[ -z ${NGINX_BARE_STARTED:-} ]]; then
    NGINX_BARE_STARTED=1
    start nginx-bare "$NGINX" -p "$WORK/nginx-bare" -e stderr -c "$WORK/nginx-bare/nginx.conf"
  fi
}

start_caddy() {
  example examples/caddy/Caddyfile "${AUTH_PORT[caddy]}" 0 >"$WORK/Caddyfile-auth"
  printf '{\n\tadmin off\n\tauto_https off\n}\nhttp://:%s {\n\tbind 127.0.0.1\n\treverse_proxy 127.0.0.1:%s\n}\n' \
    "${BARE_PORT[caddy]}" "$UPSTREAM" >"$WORK/Caddyfile-bare"
  local env=(env HOME="$WORK" XDG_DATA_HOME="$WORK/caddy-data" XDG_CONFIG_HOME="$WORK/caddy-config" GOMAXPROCS=1)
  start caddy-auth "${env[@]}" "$CADDY" run --adapter caddyfile --config "$WORK/Caddyfile-auth"
  start caddy-bare "${env[@]}" "$CADDY" run --adapter caddyfile --config "$WORK/Caddyfile-bare"
}

KEY='x-api-key: demo-key-alice'
for p in $PROXIES; do
  "start_$p"
  wait_status "http://127.0.0.1:${BARE_PORT[$p]}/api/orders" 200
  # Allowed through celgate (the upstream's "ok"), and a denial is celgate's.
  wait_status "http://127.0.0.1:${AUTH_PORT[$p]}/api/orders" 200 "$KEY"
  body=$(curl -s -H "$KEY" "http://127.0.0.1:${AUTH_PORT[$p]}/api/orders")
  [[ $body == ok ]] || die "$p: the allowed request did not reach the upstream: $body"
  denied=$(curl -s -w ' %{http_code}' "http://127.0.0.1:${AUTH_PORT[$p]}/api/orders")
  if [[ $p == kyverno ]]; then
    # auth_request answers celgate's 401 with nginx's own page.
    [[ $denied == *" 401" ]] || die "$p: expected celgate's 401, got: $denied"
  else
    [[ $denied == "missing api key"*" 401" ]] || die "$p: expected celgate's 401, got: $denied"
  fi
done

rps() { # URL SECONDS: req/s of an h2load run; dies on any failed or non-2xx request
  local out rps failed non2xx
  out=$(h2load --h1 -D "$2" -c "$CONNS" -t 1 -H "$KEY" "$1" 2>&1) ||
    { echo "$out" >&2; die "h2load failed against $1"; }
  rps=$(awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($i ~ /req\/s/) { v = $(i - 1); gsub(",", "", v); print v } }' <<<"$out")
  failed=$(awk '/^requests:/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^failed/) print $i }' <<<"$out")
  non2xx=$(awk '/^status codes:/ { print $5 + $7 + $9 }' <<<"$out")
  [[ -n $rps ]] || { echo "$out" >&2; die "could not parse h2load output for $1"; }
  [[ ${failed:-0} == 0 && ${non2xx:-0} == 0 ]] ||
    { echo "$out" >&2; die "h2load against $1: failed=$failed non-2xx=$non2xx"; }
  echo "$rps"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) printf "%.4f\n", v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

RESULTS=$WORK/results.tsv
: >"$RESULTS"
echo "== measuring: $ROUNDS round(s) x ${DURATION}s, h2load --h1 -c $CONNS -t 1, alternating bare/celgate" >&2
for p in $PROXIES; do
  bare="http://127.0.0.1:${BARE_PORT[$p]}/api/orders"
  auth="http://127.0.0.1:${AUTH_PORT[$p]}/api/orders"
  if [[ $WARMUP != 0 ]]; then rps "$bare" "$WARMUP" >/dev/null; rps "$auth" "$WARMUP" >/dev/null; fi
  for round in $(seq "$ROUNDS"); do
    b=$(rps "$bare" "$DURATION")
    a=$(rps "$auth" "$DURATION")
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.4f", a / b }')
    printf '%s\t%s\t%s\t%s\t%s\n' "$p" "$round" "$b" "$a" "$ratio" >>"$RESULTS"
    printf '  %-6s round %d  bare %10.0f req/s   with celgate %10.0f req/s   ratio %s\n' \
      "$p" "$round" "$b" "$a" "$ratio" >&2
  done
done

echo
echo "h2load --h1 -D $DURATION -c $CONNS -t 1; $ROUNDS alternating round(s); $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %14s %20s %22s\n' proxy "median bare" "median with celgate" "median ratio with/bare"
for p in $PROXIES; do
  mb=$(awk -F'\t' -v p="$p" '$1 == p { print $3 }' "$RESULTS" | median)
  ma=$(awk -F'\t' -v p="$p" '$1 == p { print $4 }' "$RESULTS" | median)
  mr=$(awk -F'\t' -v p="$p" '$1 == p { print $5 }' "$RESULTS" | median)
  printf '%-6s %14.0f %20.0f %22s\n' "$p" "$mb" "$ma" "$mr"
done
