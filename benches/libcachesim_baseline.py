#!/usr/bin/env python3
"""Run libCacheSim policies beside tierblk's replay on the same trace.

Both sides see the same access stream: each request is split into the
chunks it touches (one access per chunk, object size = chunk size, object
id = (device, chunk index)); the fast tier / cache holds
floor(fast_fraction x footprint) chunks (at least one), where the footprint
is the number of distinct chunks of the replayed requests. The replayed
requests are those from floor(from x n) on.

The script checks the harness: tierblk's LRU hit ratio must match
libCacheSim's LRU within 0.5 percentage points, else it exits with 1.
"""

import argparse
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile

import libcachesim as lcs

POLICIES = ["LRU", "ARC", "S3FIFO", "Sieve", "TwoQ", "Belady"]
ONLINE = ["LRU", "ARC", "S3FIFO", "Sieve", "TwoQ"]
TOLERANCE = 0.005


def parse_size(s):
    """"65536", "64KiB", "1MiB" -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B?|B)?\s*", s, re.IGNORECASE)
    if not m:
        sys.exit(f"bad size {s!r} (expected e.g. 65536, 64KiB, 1MiB)")
    unit = (m.group(2) or "").upper()[:1]
    return int(m.group(1)) * {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]


def read_requests(path):
    """Yields (device, offset, size) like tierblk's readers."""
    with open(path) as f:
        if path.endswith(".msr.csv"):
            for line in f:
                if not line.strip():
                    continue
                ts, host, disk, typ, off, size, _rt = line.strip().split(",")
                yield f"{host}/{disk}", int(off), int(size)
        else:
            header = f.readline().strip()
            if header != "ts_s,dev,op,offset_bytes,size_bytes":
                sys.exit(f"{path}: unexpected header {header!r}")
            for line in f:
                if not line.strip():
                    continue
                _ts, dev, _op, off, size = line.strip().split(",")
                yield dev, int(off), int(size)


def access_stream(path, chunk_size, start_fraction, max_requests):
    reqs = list(read_requests(path))
    start = math.floor(len(reqs) * start_fraction)
    reqs = reqs[start:]
    if max_requests:
        reqs = reqs[:max_requests]
    devs = {}
    out = []
    for dev, off, size in reqs:
        if size == 0:
            continue
        d = devs.setdefault(dev, len(devs))
        for c in range(off // chunk_size, (off + size - 1) // chunk_size + 1):
            out.append((d << 48) | c)
    return len(reqs), out


def write_oracle_general(path, ids, chunk_size):
    """libCacheSim's oracleGeneral binary format: <I Q I q> per request
    (timestamp, obj_id, obj_size, next_access_vtime; -1 = never again)."""
    nxt = [-1] * len(ids)
    seen = {}
    for i in range(len(ids) - 1, -1, -1):
        nxt[i] = seen.get(ids[i], -1)
        seen[ids[i]] = i
    rec = struct.Struct("<IQIq")
    with open(path, "wb") as f:
        for i, oid in enumerate(ids):
            f.write(rec.pack(i, oid, chunk_size, nxt[i]))


def run_libcachesim(trace_bin, cache_bytes):
    results = {}
    for name in POLICIES:
        reader = lcs.TraceReader(trace_bin, lcs.TraceType.ORACLE_GENERAL_TRACE)
        cache = getattr(lcs, name)(cache_size=cache_bytes)
        obj_miss, _byte_miss = cache.process_trace(reader)
        results[name] = 1.0 - obj_miss
    return results


def run_tierblk(args, chunk_size):
    cmd = [
        args.tierblk, "replay", "--trace", args.trace, "--chunk-size", str(chunk_size),
        "--fast-fraction", str(args.fast_fraction), "--from", str(args.start),
        "--epoch-requests", str(args.epoch_requests), "--models", args.models, "--json",
    ]
    if args.max_requests:
        cmd += ["--max-requests", str(args.max_requests)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", required=True)
    p.add_argument("--chunk-size", default="1MiB")
    p.add_argument("--fast-fraction", type=float, default=0.1)
    p.add_argument("--from", dest="start", type=float, default=0.5,
                   help="replay from this share of the trace (default 0.5: the half the shipped model did not train on)")
    p.add_argument("--max-requests", type=int, default=0)
    p.add_argument("--epoch-requests", type=int, default=200)
    p.add_argument("--models", default="learned,ewma")
    p.add_argument("--tierblk", default=os.environ.get("TIERBLK_BIN", "target/debug/tierblk"))
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args()
    chunk_size = parse_size(args.chunk_size)

    n_req, ids = access_stream(args.trace, chunk_size, args.start, args.max_requests)
    footprint = len(set(ids))
    fast = max(1, math.floor(footprint * args.fast_fraction))
    with tempfile.TemporaryDirectory() as d:
        trace_bin = os.path.join(d, "trace.oracleGeneral.bin")
        write_oracle_general(trace_bin, ids, chunk_size)
        lcs_hits = run_libcachesim(trace_bin, fast * chunk_size)
    tb = run_tierblk(args, chunk_size)

    ok = True
    problems = []
    if tb["accesses"] != len(ids) or tb["footprint_chunks"] != footprint or tb["fast_capacity_chunks"] != fast:
        ok = False
        problems.append(
            f"definitions differ: tierblk {tb['accesses']} accesses / {tb['footprint_chunks']} footprint / "
            f"{tb['fast_capacity_chunks']} fast, script {len(ids)} / {footprint} / {fast}")
    runs = {r["policy"]: r for r in tb["runs"]}
    lru_diff = abs(runs["lru"]["hit_ratio"] - lcs_hits["LRU"])
    if lru_diff > TOLERANCE:
        ok = False
        problems.append(f"tierblk LRU {runs['lru']['hit_ratio']:.4f} vs libCacheSim LRU {lcs_hits['LRU']:.4f}: "
                        f"differ by {lru_diff * 100:.2f} points (> {TOLERANCE * 100:.1f})")
    best_online = max(ONLINE, key=lambda k: lcs_hits[k])
    summary = {
        "trace": os.path.basename(args.trace), "chunk_size": chunk_size, "requests": n_req,
        "accesses": len(ids), "footprint_chunks": footprint, "fast_chunks": fast,
        "libcachesim": lcs_hits, "best_online": best_online,
        "tierblk": {k: {"hit_ratio": v["hit_ratio"], "bytes_promoted": v["bytes_promoted"],
                        "bytes_promoted_fast": v["bytes_promoted_fast"],
                        "mean_latency_us": v["mean_latency_us"], "p99_latency_us": v["p99_latency_us"],
                        "cost_per_month": v["cost_per_month"], "predict_secs": v["predict_secs"]}
                    for k, v in runs.items()},
        "lru_check": "ok" if ok else problems,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['trace']}  chunk {chunk_size}  {n_req} requests  {len(ids)} accesses  "
              f"footprint {footprint}  fast tier {fast} chunks")
        for k in POLICIES:
            print(f"  libCacheSim {k:<8} hit ratio {lcs_hits[k]:.4f}")
        for k, v in runs.items():
            print(f"  tierblk {k:<16} hit ratio {v['hit_ratio']:.4f}  promoted to tier 0 {v['bytes_promoted_fast'] / 2**20:10.1f} MiB")
        print("  LRU check:", "ok" if ok else "; ".join(problems))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
