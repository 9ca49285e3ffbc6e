#!/bin/sh
# Installs libCacheSim's Python package and compares its policies with
# tierblk's replay on every real trace vendored in traces/ at 64 KiB and 1 MiB chunks (fast
# tier = 10% of the footprint, second half of each trace).
# Usage: benches/baselines.sh [traces-dir [extra libcachesim_baseline.py flags]]
# (run from the repository root)
set -eu
TRACES=${1:-traces}
[ $# -gt 0 ] && shift
[ -d "$TRACES" ] || { echo "baselines.sh: trace folder $TRACES not found" >&2; exit 2; }
python3 -m pip install --quiet libcachesim
cargo build --quiet
BIN=${TIERBLK_BIN:-${CARGO_TARGET_DIR:-target}/debug/tierblk}
status=0
for t in cloudphysics_vm.csv msr_hm_0_excerpt.csv hplajw_1week.csv arc_P3.csv; do
  for cs in 64KiB 1MiB; do
    python3 benches/libcachesim_baseline.py --tierblk "$BIN" --trace "$TRACES/$t" --chunk-size "$cs" "$@" || status=1
  done
done
exit $status
