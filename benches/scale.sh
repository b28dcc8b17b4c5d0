#!/usr/bin/env bash
# Scale benchmark: throughput and memory against the number of policies.
#
# One policy per tenant, as a platform team puts them behind one gateway: policy tenant-NNNNN
# has the matchCondition `object.attributes.request.http.host == "tenant-NNNNN.example.com"`,
# a lazy variable (the API key header) and two validations (401 without a key; else an allow
# that adds `x-tenant: tenant-NNNNN`). For each set size (1, 100, 1,000, 10,000 by default) the
# set is generated into a temporary folder and benches/load.sh measures, alternating with its
# no-op floor, the request for the LAST tenant (the one a linear walk reaches last). The number
# that counts is each size's celgate/floor ratio divided by that of the 1-policy set; celgate's
# resident memory after the load is printed beside it, and the memory per policy from it.
#
# Usage:   bash benches/scale.sh
# Env:
#   SIZES="1 100 1000 10000"   set sizes
#   INDEX_OFF=1                also measure each size with --no-policy-index (the linear walk)
#   ROUNDS, DURATION, WARMUP, CONNS, STREAMS, BIN, CELGATE_BIN, NO_BUILD: as for load.sh
#   (built once here, then NO_BUILD=1 for every run)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

SIZES=${SIZES:-1 100 1000 10000}
INDEX_OFF=${INDEX_OFF:-}
BIN=${BIN:-target/release}
export BIN ROUNDS DURATION WARMUP CONNS STREAMS CELGATE_BIN

die() { echo "scale.sh: $*" >&2; exit 1; }

for n in $SIZES; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "SIZES must be positive integers, not '$n'"
done

if [[ -z ${NO_BUILD:-} ]]; then
  echo "== cargo build --release --examples --bins" >&2
  cargo build --release --examples --bins >&2
fi

bench_workdir celgate-scale

# generate N DIR: the host-scoped set of N policies, in one file.
generate() {
  local n=$1 dir=$2
  mkdir -p "$dir"
  awk -v n="$n" 'BEGIN {
    for (i = 1; i <= n; i++) {
      t = sprintf("tenant-%05d", i)
      if (i > 1) print "---"
      print "apiVersion: policies.kyverno.io/v1"
      print "kind: ValidatingPolicy"
      print "metadata:"
      print "  name: " t
      print "spec:"
      print "  evaluation:"
      print "    mode: Envoy"
      print "  matchConditions:"
      print "  - name: host"
      print "    expression: object.attributes.request.http.host == \"" t ".example.com\""
      print "  variables:"
      print "  - name: key"
      print "    expression: object.attributes.request.http.headers[?\"x-api-key\"].orValue(\"\")"
      print "  validations:"
      print "  - expression: \047variables.key == \"\" ? envoy.Denied(401).Response() : null\047"
      print "  - expression: envoy.Allowed().WithHeader(\"x-tenant\", \"" t "\").Response()"
    }
  }' >"$dir/tenants.yaml"
}

# measure N LABEL [CELGATE_ARGS]: runs load.sh on the set of N for the last tenant; appends
# "N label ratio rss_kb" to $WORK/scale.tsv.
measure() {
  local n=$1 label=$2 extra=${3:-} dir last out ratio rss
  dir=$WORK/set-$n
  [[ -d $dir ]] || generate "$n" "$dir"
  last=$(printf 'tenant-%05d' "$n")
  echo "== $n policies ($label): the request for $last" >&2
  out=$(NO_BUILD=1 POLICIES=$dir REQUESTS=custom CELGATE_ARGS=$extra \
    REQUEST_ARGS="--method GET --path /api/orders --host $last.example.com --header x-api-key=k-7f3a9c" \
    EXPECT_ARGS="--expect-allowed --expect-header x-tenant=$last" \
    bash benches/load.sh) || die "load.sh failed for $n policies ($label)"
  ratio=$(awk '$1 == "custom" && NF == 4 { r = $4 } END { print r }' <<<"$out")
  rss=$(sed -n 's/^celgate RSS after load: \([0-9]*\) kB.*/\1/p' <<<"$out")
  [[ -n $ratio && -n $rss ]] || { echo "$out" >&2; die "could not read load.sh's report"; }
  printf '%s\t%s\t%s\t%s\n' "$n" "$label" "$ratio" "$rss" >>"$WORK/scale.tsv"
}

: >"$WORK/scale.tsv"
for n in $SIZES; do
  measure "$n" index
  if [[ -n $INDEX_OFF ]]; then
    measure "$n" linear --no-policy-index
  fi
done

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "no-commit")
DIRTY=$(git status --porcelain 2>/dev/null | grep -q . && echo "+dirty" || true)
echo
echo "celgate scale benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $COMMIT$DIRTY"
echo "machine: $(nproc) cpus, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
echo "load.sh: ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} CONNS=${CONNS:-16} STREAMS=${STREAMS:-16}; request for the last tenant"
echo
printf '%9s %-7s %12s %14s %12s %16s\n' policies mode "ratio c/f" "vs 1 policy" "RSS kB" "kB per policy"
awk -F'\t' '
  { n[NR] = $1; mode[NR] = $2; r[NR] = $3; rss[NR] = $4
    if ($1 == 1 && !(($2) in base)) { base[$2] = $3; rss1[$2] = $4 } }
  END {
    for (i = 1; i <= NR; i++) {
      b = (mode[i] in base) ? base[mode[i]] : base["index"]
      m = (mode[i] in rss1) ? rss1[mode[i]] : rss1["index"]
      vs = (b > 0) ? sprintf("%.3f", r[i] / b) : "?"
      per = (n[i] > 1 && m != "") ? sprintf("%.2f", (rss[i] - m) / (n[i] - 1)) : "-"
      printf "%9d %-7s %12s %14s %12d %16s\n", n[i], mode[i], r[i], vs, rss[i], per
    }
  }' "$WORK/scale.tsv"
echo
echo "vs 1 policy: the size's celgate/floor ratio over that of the 1-policy set (same mode);"
echo "kB per policy: (RSS - RSS of the 1-policy set) / (policies - 1)."
