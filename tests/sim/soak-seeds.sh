#!/usr/bin/env bash
# Runs every simulator scenario over many seeds (issue 9: "run 200 seeds of
# each, not only seed 1") and prints, per scenario, how many seeds had
# violations and the violation kinds summed over all seeds.
#
#   tests/sim/soak-seeds.sh [SEEDS] [VCPUS] [STEPS] [SCENARIOS...]
#   defaults: 200 seeds (1..200), 64 vCPUs, 1,000,000 steps, every scenario
#   JOBS=N runs N simulations at once (default 2); EXTRA="--host-clears-ai"
#   passes extra flags to every run.
# Exit status 1 when any run reported a violation.
set -euo pipefail

SEEDS=${1:-200}
VCPUS=${2:-64}
STEPS=${3:-1000000}
shift $(( $# > 3 ? 3 : $# ))
SCENARIOS=("$@")
if [ ${#SCENARIOS[@]} -eq 0 ]; then
  SCENARIOS=(idle-timer ipi-storm device-level boot hostile-hv hostile-guest deregister
             reinject-stall tsc-deadline handback-due level-edge handback-fail recreate
             apic-disable)
fi
JOBS=${JOBS:-2}
EXTRA=${EXTRA:-}

cd "$(dirname "$0")/../.."
cargo build --release -q -p sim
SIM=${CARGO_TARGET_DIR:-target}/release/sim
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

status=0
printf '%-15s %6s %8s %12s  %s\n' scenario seeds failing violations "first failing seed"
for s in "${SCENARIOS[@]}"; do
  # One line per seed: "seed violations", the kinds into a per-seed file.
  seq 1 "$SEEDS" | xargs -P "$JOBS" -I{} sh -c \
    "$SIM --scenario $s --vcpus $VCPUS --seed {} --steps $STEPS --quiet $EXTRA > $OUT/$s.{} 2>&1 || true"
  failing=0; total=0; first=-
  for seed in $(seq 1 "$SEEDS"); do
    n=$(awk '/INVARIANT VIOLATIONS/ {print $3}' "$OUT/$s.$seed")
    n=${n:-1}
    if [ "$n" != 0 ]; then
      failing=$((failing + 1)); total=$((total + n))
      [ "$first" = - ] && first=$seed
    fi
  done
  printf '%-15s %6s %8s %12s  %s\n' "$s" "$SEEDS" "$failing" "$total" "$first"
  if [ "$failing" != 0 ]; then
    status=1
    # The kinds, summed over the seeds, with the seeds showing each (first 5).
    for seed in $(seq 1 "$SEEDS"); do
      awk -v seed="$seed" '/^ +[0-9]+ x / { n = $1; $1 = ""; $2 = ""; print seed "\t" n "\t" $0 }' "$OUT/$s.$seed"
    done | awk -F'\t' '{ k[$3] += $2; c[$3]++; if (c[$3] <= 5) s[$3] = s[$3] " " $1 }
      END { for (x in k) printf "    %8d x%s  [%d seeds:%s]\n", k[x], x, c[x], s[x] }' | sort -rn
  fi
done
exit $status
