#!/usr/bin/env bash
# S2's tail against its floor, side by side: what the guarantees cost at the harness's token stream.
#
#   bash scripts/s2_floor.sh [ROUNDS]      # default 3; about 3 minutes a round
#
# Runs the side-by-side harness's S2 (1,000 tabs on 500 conversations, 20 chunks/s each) for
# `streamfan` (2 workers) and `py_ref`, ROUNDS times, interleaving two publish paths:
#   product  this checkout as it is (`wire.scripts.delta_commands`: the fenced DELTAS script);
#   floor    the same commit in a throwaway worktree whose `delta_commands` is
#            scripts/unfenced_deltas.py: XADD + SPUBLISH of each chunk in one call, no fence, no
#            index check, no escaping (a history-keeping relay's floor; never the product's path).
# The node, the frames, the tabs and the history are the same in both; only Redis' work per chunk
# differs. Prints each run's p50/p99 (ms) and Redis CPU (%) beside py_ref's of the same run, and the
# p99 ratio. Needs the harness (`bash ../shared/bench/setup.sh`); its reports go to
# bench-results/s2-floor-<stamp>/. Removes the worktree when done.
set -euo pipefail
ROUNDS=${1:-3}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="${BENCH_DIR:-$ROOT/../shared/bench}"
OUT="$ROOT/bench-results/s2-floor-$(date +%Y%m%d-%H%M%S)"
WT="$(mktemp -d /tmp/s2-floor.XXXXXX)"
rmdir "$WT"
git -C "$ROOT" worktree add -q --detach "$WT" HEAD
trap 'git -C "$ROOT" worktree remove --force "$WT"' EXIT
cp "$ROOT/scripts/unfenced_deltas.py" "$WT/wire/unfenced_deltas.py"
printf '\nfrom wire.unfenced_deltas import delta_commands, setup_commands  # noqa: E402,F811 (s2_floor.sh)\n' \
  >> "$WT/wire/scripts.py"
mkdir -p "$OUT"
for round in $(seq "$ROUNDS"); do
  for way in product floor; do
    dir="$ROOT"; [ "$way" = floor ] && dir="$WT"
    STREAMFAN_DIR="$dir" SKIP_SETUP=1 bash "$BENCH/run_all.sh" --skip-ceiling --skip-redis-benchmark \
      --peers streamfan py_ref --scenarios S2 --out "$OUT/$round-$way.md" > "$OUT/$round-$way.log" 2>&1
  done
done
# The S2 table's columns: 2 peer, 4 p50, 6 p99, 14 Redis CPU %, 18 bg CPU %.
printf '%-6s %-8s %22s %22s %9s %6s\n' round way "streamfan p50/p99 (Redis)" "py_ref p50/p99 (Redis)" "p99 ratio" "bg %"
for round in $(seq "$ROUNDS"); do
  for way in product floor; do
    awk -F'|' -v r="$round" -v w="$way" '
      $2 ~ /^ streamfan / { sp50 = $4; sp99 = $6; sr = $14; bg = $18 }
      $2 ~ /^ py_ref /    { pp50 = $4; pp99 = $6; pr = $14; if ($18 > bg) bg = $18 }
      END { printf "%-6s %-8s %12.1f/%.1f (%d%%) %12.1f/%.1f (%d%%) %9.2f %6d\n", r, w, sp50, sp99, sr, pp50, pp99, pr, sp99 / pp99, bg }
    ' "$OUT/$round-$way.md"
  done
done
echo "reports: $OUT"
