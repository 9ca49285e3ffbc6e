#!/usr/bin/env python3
"""Held-out evaluation of tierblk's predictors on the real traces vendored in traces/.

For every trace and chunk size (64 KiB, 1 MiB) it replays one part of the
trace with `tierblk replay --json` (fast tier = 10% of the footprint, epoch
200 requests) and prints, per run, the tier-0 hit ratio and the bytes
promoted into tier 0 of each tierblk model next to tierblk's LRU.

  --split test  (default) replay the second half, held out from training;
  --split tune  replay the first half only (what the models were trained
                on): use it to choose knobs without looking at the test half.

With --libcachesim it also runs benches/libcachesim_baseline.py on the same
slice and adds the best online libCacheSim policy.

Usage (repository root): benches/heldout_eval.py [--models learned,ewma]
  [--split test|tune] [--libcachesim] [--tierblk target/release/tierblk]
  [-- extra tierblk replay flags]
"""

import argparse
import json
import os
import subprocess
import sys

TRACES = ["cloudphysics_vm.csv", "msr_hm_0_excerpt.csv", "hplajw_1week.csv", "arc_P3.csv"]
CHUNKS = [("64KiB", 65536), ("1MiB", 1 << 20)]


def count_requests(path):
    with open(path) as f:
        n = sum(1 for line in f if line.strip())
    return n - (0 if path.endswith(".msr.csv") else 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traces-dir", default="traces")
    p.add_argument("--traces", default=",".join(TRACES))
    p.add_argument("--models", default="learned,ewma")
    p.add_argument("--split", choices=["test", "tune"], default="test")
    p.add_argument("--epoch-requests", type=int, default=200)
    p.add_argument("--libcachesim", action="store_true")
    p.add_argument("--tierblk", default=os.environ.get("TIERBLK_BIN", "target/debug/tierblk"))
    p.add_argument("--json", action="store_true")
    p.add_argument("extra", nargs="*", help="extra flags for tierblk replay (after --)")
    a = p.parse_args()
    models = a.models.split(",")
    rows = []
    for t in a.traces.split(","):
        path = os.path.join(a.traces_dir, t)
        if not os.path.exists(path):
            sys.exit(f"heldout_eval: trace {path} not found")
        if a.split == "test":
            span = ["--from", "0.5"]
        else:
            span = ["--from", "0", "--max-requests", str(count_requests(path) // 2)]
        for cs_name, _cs in CHUNKS:
            cmd = [a.tierblk, "replay", "--trace", path, "--chunk-size", cs_name,
                   "--epoch-requests", str(a.epoch_requests), "--models", ",".join(models),
                   "--compare", "lru", "--json", *span, *a.extra]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out)
            runs = {x["policy"]: x for x in r["runs"]}
            row = {"trace": t, "chunk": cs_name, "fast_chunks": r["fast_capacity_chunks"], "runs": {}}
            for k, v in runs.items():
                row["runs"][k] = {"hit_ratio": v["hit_ratio"], "promoted_fast_mib": v["bytes_promoted_fast"] / 2**20,
                                  "predict_secs": v["predict_secs"]}
            if a.libcachesim:
                lcs_cmd = ["python3", "benches/libcachesim_baseline.py", "--tierblk", a.tierblk, "--trace", path,
                           "--chunk-size", cs_name, "--epoch-requests", str(a.epoch_requests), "--json",
                           "--models", models[0]]
                if a.split == "test":
                    lcs_cmd += ["--from", "0.5"]
                else:
                    lcs_cmd += ["--from", "0", "--max-requests", str(count_requests(path) // 2)]
                res = subprocess.run(lcs_cmd, capture_output=True, text=True)
                if not res.stdout.strip():
                    sys.exit(f"heldout_eval: libcachesim_baseline.py failed: {res.stderr.strip()}")
                lo = json.loads(res.stdout)
                row["libcachesim"] = lo["libcachesim"]
                row["lru_check"] = lo["lru_check"]
                best = lo["best_online"]
                row["libcachesim_best_online"] = {"policy": best, "hit_ratio": lo["libcachesim"][best]}
            rows.append(row)
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    names = list(rows[0]["runs"].keys())
    hdr = f"{'trace':<22}{'chunk':>6}{'fast':>6}" + "".join(f"{n[:16]:>17}" for n in names)
    hdr += "   promoted MiB (" + " / ".join(n[:12] for n in names) + ")"
    if a.libcachesim:
        hdr += "   best libCacheSim online"
    print(hdr)
    wins = {n: 0 for n in names}
    for row in rows:
        line = f"{row['trace'][:21]:<22}{row['chunk']:>6}{row['fast_chunks']:>6}"
        line += "".join(f"{row['runs'][n]['hit_ratio']:>17.4f}" for n in names)
        line += "   " + " / ".join(f"{row['runs'][n]['promoted_fast_mib']:.0f}" for n in names)
        if a.libcachesim and row.get("libcachesim_best_online"):
            b = row["libcachesim_best_online"]
            line += f"   {b['policy']} {b['hit_ratio']:.4f}"
        print(line)
        best = max(row["runs"][n]["hit_ratio"] for n in names)
        for n in names:
            if row["runs"][n]["hit_ratio"] >= best - 1e-9:
                wins[n] += 1
    mean = {n: sum(r["runs"][n]["hit_ratio"] for r in rows) / len(rows) for n in names}
    print("mean hit ratio: " + ", ".join(f"{n} {mean[n]:.4f}" for n in names))
    print("best-or-tied count: " + ", ".join(f"{n} {wins[n]}" for n in names))


if __name__ == "__main__":
    main()
