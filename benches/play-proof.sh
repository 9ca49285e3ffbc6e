#!/usr/bin/env bash
# Issue 11 proof on emulated tiers (nvme 90/30 us 8 MiB, ssd 250/80 us
# 32 MiB, hdd 4 ms 1 GiB; 64 KiB chunks, epoch 2.5 s, 64 MiB/s, EWMA,
# performance-optimized): plays a whole trace with `tierblk play --prefill`
# against a daemon with tiering and one with tiering_enabled = false, then
# replays it with `--prefill` and the daemon's clock in trace time, and
# prints the daemon's and replay's fast-tier hit ratios, guest latency and
# cost. Usage: benches/play-proof.sh TRACE SPEED [OUTDIR]
# (TIERBLK=path picks the binary; default target/release/tierblk). The
# trace must play in a few minutes at SPEED; results: benches/README.md.
set -euo pipefail
B=${TIERBLK:-target/release/tierblk}
T=${1:?trace}
SPEED=${2:?speed}; EPOCH=2.5; MIG=64; OUT=${3:-/tmp/tierblk-play-proof}
# tier ID NAME CAPACITY COST READ_US WRITE_US MIBPS DIR: one [[tier]]
# (its file in DIR/tID), emulated at its own latencies.
tier() {
  printf '[[tier]]\ntier_id = %s\nname = "%s"\ncapacity = "%s"\ncost_per_gb = %s\npath = "%s"\n' \
    "$1" "$2" "$3" "$4" "$8/t$1"
  printf 'performance_metrics = { read_latency_us = %s, write_latency_us = %s, bandwidth_mibps = %s }\n' \
    "$5" "$6" "$7"
  printf 'emulate = { read_latency_us = %s, write_latency_us = %s }\n' "$5" "$6"
}
mk() { # dir extra
  local d=$1
  mkdir -p "$d"/t0 "$d"/t1 "$d"/t2 "$d"/state
  {
    printf '[daemon]\nstate_dir = "%s"\nepoch_secs = %s\nmigration_mibps = %s\n' "$d/state" "$EPOCH" "$MIG"
    tier 0 nvme 8MiB 0.25 90 30 3000 "$d"
    tier 1 ssd 32MiB 0.08 250 80 500 "$d"
    tier 2 hdd 1GiB 0.02 4000 4000 150 "$d"
    printf '[[volume]]\nname = "vm"\nsize = "1GiB"\nchunk_size = "64KiB"\nsocket = "%s"\nprediction_model = "ewma"\n%s\n' \
      "$d/vm.sock" "$2"
  } >"$d"/cfg.toml
}
for kind in tiered flat; do
  d=$OUT/$kind; rm -rf $d
  if [ $kind = tiered ]; then mk $d 'tiering_policy = "performance-optimized"'; else mk $d 'tiering_enabled = false'; fi
  $B serve --config $d/cfg.toml > $d/log 2>&1 &
  pid=$!
  for _ in $(seq 100); do [ -S $d/vm.sock ] && break; sleep 0.1; done
  $B play --config $d/cfg.toml --trace $T --speed $SPEED --qd 16 --prefill --json > $d/play.json 2> $d/play.err || echo "play $kind failed: $(cat $d/play.err)"
  kill $pid; wait $pid || true
done
$B replay --config $OUT/tiered/cfg.toml --trace $T --chunk-size 64KiB --fast-fraction 0 \
  --epoch-secs $(python3 -c "print($EPOCH*$SPEED)") --migration-mibps $(python3 -c "print($MIG/$SPEED)") \
  --policy performance-optimized --models ewma --compare none,lru --prefill --json > $OUT/replay.json
OUT=$OUT python3 - <<'PY'
import json, os
t=json.load(open(os.environ['OUT']+'/tiered/play.json')); f=json.load(open(os.environ['OUT']+'/flat/play.json')); r=json.load(open(os.environ['OUT']+'/replay.json'))
d={x['policy']:x for x in r['runs']}
print("daemon hit %.4f replay %.4f lru(replay) %.4f | mean us tiered %.1f flat %.1f | p99 tiered %.1f flat %.1f | wall %.1f s lag %.1f ms | cost %.4f all-fast %.4f | promoted MiB %.1f"%(
 t['daemon']['fast_hit_ratio'], d['tierblk-ewma']['hit_ratio'], d['lru']['hit_ratio'], t['all']['mean_us'], f['all']['mean_us'], t['all']['p99_us'], f['all']['p99_us'], t['wall_secs'], t['max_issue_lag_ms'], t['daemon']['cost_per_month'], t['daemon']['cost_per_month_all_fast'], t['daemon']['bytes_promoted']/2**20))
PY
