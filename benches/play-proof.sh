#!/usr/bin/env bash
# Issue 11 proof on emulated tiers (nvme 90/30 us 8 MiB, ssd 250/80 us
# 32 MiB, hdd 4 ms 1 GiB; 64 KiB chunks, epoch 2.5 s, 64 MiB/s, EWMA,
# performance-optimized): plays a whole trace with `tierblk play --prefill`
# against three daemons: tierblk's tiering, the LRU baseline (the same
# daemon with prediction_model = "lru": tier 0 as an LRU cache filled on
# misses, the dm-cache/bcache stand-in) and tiering_enabled = false; then
# replays it with `--prefill` and the daemon's clock in trace time, and
# prints the daemons' and replay's fast-tier hit ratios, guest latency,
# bytes moved and cost. Usage: benches/play-proof.sh TRACE SPEED [OUTDIR]
# (TIERBLK=path picks the binary, default target/release/tierblk; MODEL
# tierblk's prediction_model, default ewma). The
# trace must play in a few minutes at SPEED; results: benches/README.md.
set -euo pipefail
B=${TIERBLK:-target/release/tierblk}
MODEL=${MODEL:-ewma}
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
mk() { # dir model extra
  local d=$1
  mkdir -p "$d"/t0 "$d"/t1 "$d"/t2 "$d"/state
  {
    printf '[daemon]\nstate_dir = "%s"\nepoch_secs = %s\nmigration_mibps = %s\n' "$d/state" "$EPOCH" "$MIG"
    tier 0 nvme 8MiB 0.25 90 30 3000 "$d"
    tier 1 ssd 32MiB 0.08 250 80 500 "$d"
    tier 2 hdd 1GiB 0.02 4000 4000 150 "$d"
    printf '[[volume]]\nname = "vm"\nsize = "1GiB"\nchunk_size = "64KiB"\nsocket = "%s"\nprediction_model = "%s"\n%s\n' \
      "$d/vm.sock" "$2" "$3"
  } >"$d"/cfg.toml
}
for kind in tiered lru off; do
  d=$OUT/$kind; rm -rf $d
  case $kind in
    tiered) mk $d "$MODEL" 'tiering_policy = "performance-optimized"' ;;
    lru) mk $d lru 'tiering_policy = "performance-optimized"' ;;
    off) mk $d ewma 'tiering_enabled = false' ;;
  esac
  $B serve --config $d/cfg.toml > $d/log 2>&1 &
  pid=$!
  for _ in $(seq 100); do [ -S $d/vm.sock ] && break; sleep 0.1; done
  $B play --config $d/cfg.toml --trace $T --speed $SPEED --qd 16 --prefill --json > $d/play.json 2> $d/play.err || echo "play $kind failed: $(cat $d/play.err)"
  kill $pid; wait $pid || true
done
$B replay --config $OUT/tiered/cfg.toml --trace $T --chunk-size 64KiB --fast-fraction 0 \
  --epoch-secs $(python3 -c "print($EPOCH*$SPEED)") --migration-mibps $(python3 -c "print($MIG/$SPEED)") \
  --policy performance-optimized --models "$MODEL",lru --compare none,lru --prefill --json > $OUT/replay.json
OUT=$OUT MODEL=$MODEL python3 - <<'PY'
import json, os
o=os.environ['OUT']
p={k: json.load(open(f"{o}/{k}/play.json")) for k in ("tiered", "lru", "off")}
r={x['policy']: x for x in json.load(open(o+'/replay.json'))['runs']}
m='tierblk-'+os.environ['MODEL']
moved=lambda k: (p[k]['daemon']['bytes_promoted']+p[k]['daemon']['bytes_demoted'])/2**20
t=p['tiered']
print("hit ratio: daemon %.4f, replay %.4f | LRU baseline: daemon %.4f, replay %.4f | replay LRU (free moves) %.4f"%(
 t['daemon']['fast_hit_ratio'], r[m]['hit_ratio'], p['lru']['daemon']['fast_hit_ratio'], r['tierblk-lru']['hit_ratio'], r['lru']['hit_ratio']))
print("guest mean / p99 us: tiered %.0f / %.0f, LRU %.0f / %.0f, off %.0f / %.0f"%(
 t['all']['mean_us'], t['all']['p99_us'], p['lru']['all']['mean_us'], p['lru']['all']['p99_us'], p['off']['all']['mean_us'], p['off']['all']['p99_us']))
print("moved MiB (promoted + demoted): tiered %.1f, LRU %.1f | cost/month tiered %.4f, LRU %.4f, all on tier 0 %.4f | wall %.1f s, lag %.1f ms"%(
 moved('tiered'), moved('lru'), t['daemon']['cost_per_month'], p['lru']['daemon']['cost_per_month'], t['daemon']['cost_per_month_all_fast'], t['wall_secs'], t['max_issue_lag_ms']))
PY
