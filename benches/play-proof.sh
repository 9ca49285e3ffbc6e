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
mk() { # dir extra
  d=$1; mkdir -p $d/t0 $d/t1 $d/t2 $d/state
  cat > $d/cfg.toml <<EOT
[daemon]
state_dir = "$d/state"
epoch_secs = $EPOCH
migration_mibps = $MIG
[[tier]]
tier_id = 0
name = "nvme"
capacity = "8MiB"
cost_per_gb = 0.25
path = "$d/t0"
performance_metrics = { read_latency_us = 90, write_latency_us = 30, bandwidth_mibps = 3000 }
emulate = { read_latency_us = 90, write_latency_us = 30 }
[[tier]]
tier_id = 1
name = "ssd"
capacity = "32MiB"
cost_per_gb = 0.08
path = "$d/t1"
performance_metrics = { read_latency_us = 250, write_latency_us = 80, bandwidth_mibps = 500 }
emulate = { read_latency_us = 250, write_latency_us = 80 }
[[tier]]
tier_id = 2
name = "hdd"
capacity = "1GiB"
cost_per_gb = 0.02
path = "$d/t2"
performance_metrics = { read_latency_us = 4000, write_latency_us = 4000, bandwidth_mibps = 150 }
emulate = { read_latency_us = 4000, write_latency_us = 4000 }
[[volume]]
name = "vm"
size = "1GiB"
chunk_size = "64KiB"
socket = "$d/vm.sock"
prediction_model = "ewma"
$2
EOT
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
