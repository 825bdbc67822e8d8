#!/usr/bin/env bash
# A node's CPU at a fixed delivery rate in S2's shape, to set one worker beside two.
#
#   bash scripts/workers_cost.sh WORKERS RATE SECONDS [spy]
#
# Starts a private redis-server and `python -m server --workers WORKERS` on free loopback ports,
# creates 500 conversations with the side-by-side harness's setup, and runs its load client
# (`../shared/bench/sseload.py`: 1,000 tabs, 2 per conversation, the harness's batch hook publishing)
# at RATE chunks/s per conversation (RATE 40: 40k deliveries/s) for SECONDS. Prints the CPU of all
# the node's processes and of Redis over 8 s of the publishing window (in % of one core), then the
# load client's verdict (latencies; lost, doubled, out of order). With `spy`, py-spy records each
# worker meanwhile into /tmp/workers-cost-spy-<pid>.txt (needs py-spy on PATH). Needs the harness's
# venv (`bash ../shared/bench/setup.sh`). Everything it starts it stops, by PID.
set -euo pipefail
WORKERS=$1 RATE=$2 SECONDS_=$3 SPY=${4:-}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="${BENCH_DIR:-$ROOT/../shared/bench}"
BENCH_PY="${BENCH_STATE:-$HOME/.cache/streamfan-bench}/venv/bin/python"
PY="$ROOT/.venv/bin/python"
OUT="$(mktemp -d /tmp/workers-cost.XXXXXX)"
free_port() { "$PY" -c 'from launch.processes import free_port; print(free_port())'; }
cd "$ROOT"
RP=$(free_port) NP=$(free_port)
PIDS=()
stop() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no > "$OUT/redis.log" 2>&1 &
RPID=$!; PIDS+=("$RPID")
export REDIS_URL="redis://127.0.0.1:$RP" STREAMFAN_SECRET="$(openssl rand -hex 32)"
export STREAMFAN_LIMITS_EXEMPT=127.0.0.0/8 STREAMFAN_SHUTDOWN_SECONDS=1
"$PY" -m server --host 127.0.0.1 --port "$NP" --workers "$WORKERS" --log-level WARNING > "$OUT/node.log" 2>&1 &
NPID=$!; PIDS=("$NPID" "${PIDS[@]}")
"$PY" "$BENCH/peers/streamfan_setup.py" "http://127.0.0.1:$NP" "redis://127.0.0.1:$RP" 500 "$OUT/channels.txt" > /dev/null
NODE_PIDS="$NPID $(pgrep -P "$NPID" | tr '\n' ' ')"
"$BENCH_PY" "$BENCH/sseload.py" run --sub-url "http://127.0.0.1:$NP/api/conversations/{ch}/events" \
  --conns 1000 --channels 500 --workers 1 --max-seconds 120 --json "$OUT/load.json" \
  --connect-concurrency 50 --payload-bytes 160 --channel-map "$OUT/channels.txt" \
  --sub-header "Authorization: Bearer {token}" --publish streamfan --redis-url "127.0.0.1:$RP" \
  --streamfan-src "$ROOT" --phase "$RATE:$SECONDS_" > "$OUT/load.log" 2>&1 &
LPID=$!; PIDS+=("$LPID")
for _ in $(seq 240); do grep -q "PHASE 0 start" "$OUT/load.log" && break; sleep 0.5; done
sleep 3
ticks() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true; done | paste -sd+ | bc; }
N0=$(ticks $NODE_PIDS) R0=$(ticks "$RPID") T0=$(date +%s.%N)
if [ "$SPY" = spy ]; then
  for p in $NODE_PIDS; do py-spy record -p "$p" -d 8 -r 200 -f raw -o "/tmp/workers-cost-spy-$p.txt" > /dev/null 2>&1 & done
fi
sleep 8
N1=$(ticks $NODE_PIDS) R1=$(ticks "$RPID") T1=$(date +%s.%N)
HZ=$(getconf CLK_TCK)
echo "workers $WORKERS, $RATE chunks/s per conversation: node CPU $(echo "100 * ($N1 - $N0) / $HZ / ($T1 - $T0)" | bc -l | cut -c1-5) %," \
  "Redis $(echo "100 * ($R1 - $R0) / $HZ / ($T1 - $T0)" | bc -l | cut -c1-5) %"
wait "$LPID" || true
grep "PHASE 0 end" "$OUT/load.log" | cut -c1-200
