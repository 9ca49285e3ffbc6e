#!/usr/bin/env python3
"""Data-path benchmark: tierblk against qemu-storage-daemon (QSD) and host
fio on the same backing file, alternating targets A/B/A/B over several
rounds, with page-cached and O_DIRECT backing.

Targets
  tierblk-1   tierblk, one tier, tiering disabled
  tierblk-3   tierblk, three tiers on the same disk (emulate off), tiering on
  tierblk-3-off  (opt-in) tierblk-3's files and layout with tiering off: with
              it, tierblk-3/tierblk-3-off is the cost of the tiering logic
              alone, apart from how the data is spread over files
  qsd         qemu-storage-daemon --export type=vhost-user-blk (io_uring)
  host-fio    fio with ioengine=io_uring directly on the backing file
The three vhost-user targets are driven by the same client
(benches/loadgen.rs, libblkio's virtio-blk-vhost-user driver).

Usage: benches/compare.py [--smoke] [--rounds N] [--secs S] [--debug]
                          [--jobs NAME,...] [--modes cached,direct] [--json FILE]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30
MIB = 1 << 20

JOBS = {
    "4k-randread-qd32-1q": dict(op="randread", bs=4096, qd=32, queues=1),
    "4k-randread-qd32-2q": dict(op="randread", bs=4096, qd=32, queues=2),
    "4k-randwrite-qd32": dict(op="randwrite", bs=4096, qd=32, queues=1),
    "128k-seqread-qd8": dict(op="read", bs=131072, qd=8, queues=1),
}
TARGETS = ["tierblk-1", "tierblk-3", "qsd", "host-fio"]
OPTIONAL_TARGETS = ["tierblk-3-off"]


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


class Env:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="tierblk-bench-"))
        profile = "debug" if args.debug else "release"
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        self.tierblk = target / profile / "tierblk"
        self.loadgen = target / profile / "examples" / "loadgen"
        self.size = args.size

    def build(self):
        cmd = ["cargo", "build", "--bin", "tierblk", "--example", "loadgen"]
        if not self.args.debug:
            cmd.append("--release")
        run(cmd, cwd=REPO)

    def tierblk_config(self, name, tiers, direct, tiering=None):
        d = self.work / name
        d.mkdir(exist_ok=True)
        tier_lines = []
        for i, cap in enumerate(tiers):
            td = d / f"t{i}"
            td.mkdir(exist_ok=True)
            tier_lines.append(f"""[[tier]]
tier_id = {i}
name = "t{i}"
capacity = {cap}
cost_per_gb = {[0.25, 0.10, 0.03][i]}
path = "{td}"
direct_io = {str(direct).lower()}
performance_metrics = {{ read_latency_us = 100, write_latency_us = 100, bandwidth_mibps = 1000 }}
""")
        if tiering is None:
            tiering = len(tiers) > 1
        cfg = d / f"tierblk-{'direct' if direct else 'cached'}{'' if tiering else '-off'}.toml"
        cfg.write_text(f"""[daemon]
state_dir = "{d / 'state'}"
epoch_secs = 10

{''.join(tier_lines)}
[[volume]]
name = "bench"
size = {self.size}
chunk_size = "1MiB"
socket = "{d / 'vol.sock'}"
num_queues = 2
queue_size = 256
tiering_enabled = {str(tiering).lower()}
""")
        return cfg, d / "vol.sock", d / "t0" / "extents.dat"


class Target:
    """Starts and stops one vhost-user backend; `pid` for CPU accounting."""

    def __init__(self, cmd, sock, logfile):
        self.cmd, self.sock, self.logfile = cmd, Path(sock), logfile
        self.proc = None

    def __enter__(self):
        if self.sock.exists():
            self.sock.unlink()
        self.proc = subprocess.Popen(self.cmd, stdout=open(self.logfile, "a"), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not self.sock.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{self.cmd[0]} did not start: {Path(self.logfile).read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def loadgen(env, sock, pid, job, secs, once=False):
    cmd = [str(env.loadgen), "--socket", str(sock), "--op", job["op"], "--bs", str(job["bs"]),
           "--qd", str(job["qd"]), "--queues", str(job["queues"]), "--secs", str(secs),
           "--pid", str(pid), "--json"] + (["--once"] if once else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr.strip()}")
    r = json.loads(out.stdout)
    return dict(iops=r["iops"], mibps=r["mibps"], p50=r["lat_us"]["p50"], p99=r["lat_us"]["p99"],
                p999=r["lat_us"]["p999"], cpu_per_io=r["backend_cpu_us_per_io"],
                per_queue=r["per_queue_iops"])


def host_fio(path, job, secs, direct):
    rw = {"randread": "randread", "randwrite": "randwrite", "read": "read", "write": "write"}[job["op"]]
    cmd = ["fio", "--name=host", f"--filename={path}", "--ioengine=io_uring", f"--rw={rw}",
           f"--bs={job['bs']}", f"--iodepth={job['qd']}", f"--numjobs={job['queues']}",
           f"--direct={1 if direct else 0}", "--time_based", f"--runtime={max(1, round(secs))}", "--group_reporting",
           "--output-format=json", "--randrepeat=0"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"fio failed: {out.stderr.strip()[-500:]}")
    j = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    side = j["write"] if rw in ("randwrite", "write") else j["read"]
    ios = side["total_ios"] or 1
    pct = side["clat_ns"].get("percentile", {})
    cpu_s = (j["usr_cpu"] + j["sys_cpu"]) / 100.0 * max(1, round(secs)) * job["queues"]
    return dict(iops=side["iops"], mibps=side["bw_bytes"] / MIB, p50=pct.get("50.000000", 0) / 1000,
                p99=pct.get("99.000000", 0) / 1000, p999=pct.get("99.900000", 0) / 1000,
                cpu_per_io=cpu_s * 1e6 / ios, per_queue=[])


def backing_files(env, name, backing):
    """The files a target's data lives in."""
    if name.startswith("tierblk"):
        d = "tierblk-3" if name == "tierblk-3-off" else name
        return sorted((env.work / d).glob("t*/extents.dat"))
    return [Path(backing)]


def reset_cache(files, populate):
    """Writes back and drops the files' cached pages, then (for page-cached
    runs) reads them once sequentially. What a file's page cache holds, and in
    which folio sizes, depends on its history (1 MiB prefill writes, earlier
    jobs) and changes the cost of buffered 4k writes several-fold in the
    kernel (ext4_block_write_begin walks every block of a large folio); without
    this, target order and earlier jobs decide the cached rows."""
    os.sync()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if populate:
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while fh.read(MIB):
                    pass


def loadavg():
    return Path("/proc/loadavg").read_text().split()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few seconds: one short run per target, debug build")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=GIB, help="backing file / volume size in bytes")
    ap.add_argument("--debug", action="store_true", help="benchmark debug builds")
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--modes", default="cached,direct")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--json", help="write all samples to this file")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.secs, args.debug = 1, 1.0, True
        args.size = 64 * MIB
        args.jobs, args.modes = "4k-randread-qd32-2q", "cached"
    jobs = [j for j in args.jobs.split(",")]
    modes = args.modes.split(",")
    targets = args.targets.split(",")
    for t in targets:
        if t not in TARGETS + OPTIONAL_TARGETS:
            sys.exit(f"compare.py: unknown target {t} (known: {', '.join(TARGETS + OPTIONAL_TARGETS)})")
    for j in jobs:
        if j not in JOBS:
            sys.exit(f"compare.py: unknown job {j} (known: {', '.join(JOBS)})")
    for tool in ["qemu-storage-daemon", "fio"]:
        if not shutil.which(tool):
            sys.exit(f"compare.py: {tool} not found (apt-get install qemu-system-x86 fio)")
    env = Env(args)
    env.build()
    samples = []  # (job, mode, target, round, result)
    try:
        for mode in modes:
            direct = mode == "direct"
            t1_cfg, t1_sock, backing = env.tierblk_config("tierblk-1", [env.size], direct)
            third = (env.size // 3) // MIB * MIB
            t3_cfg, t3_sock, _ = env.tierblk_config("tierblk-3", [third, third, env.size], direct)
            t3_off, _, _ = env.tierblk_config("tierblk-3", [third, third, env.size], direct, tiering=False)
            cmds = {
                "tierblk-1": ([str(env.tierblk), "serve", "--config", str(t1_cfg)], t1_sock),
                "tierblk-3": ([str(env.tierblk), "serve", "--config", str(t3_cfg)], t3_sock),
                "tierblk-3-off": ([str(env.tierblk), "serve", "--config", str(t3_off)], t3_sock),
                "qsd": (["qemu-storage-daemon",
                         "--blockdev", f"driver=file,node-name=file0,filename={backing},aio=io_uring,"
                                       f"cache.direct={'on' if direct else 'off'}",
                         "--blockdev", "driver=raw,node-name=disk0,file=file0",
                         "--export", f"type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,"
                                     f"addr.path={env.work / 'qsd.sock'},writable=on,num-queues=2"],
                        env.work / "qsd.sock"),
            }
            # Prefill: write every block once through tierblk, so every
            # target reads real data (and tierblk has allocated every chunk);
            # QSD and fio then use tierblk-1's extent file as the backing file.
            for name in ("tierblk-1", "tierblk-3"):
                if name in targets or (name == "tierblk-1" and set(targets) & {"qsd", "host-fio"}) \
                        or (name == "tierblk-3" and "tierblk-3-off" in targets):
                    cmd, sock = cmds[name]
                    with Target(cmd, sock, env.work / f"{name}.log") as t:
                        fill = dict(op="write", bs=MIB, qd=8, queues=1)
                        r = loadgen(env, sock, t.proc.pid, fill, 0, once=True)
                        if r["iops"] <= 0:
                            raise RuntimeError(f"prefill of {name} wrote nothing")
                    log(f"{mode}: prefilled {name}")
            for job in jobs:
                for rnd in range(args.rounds):
                    order = targets if rnd % 2 == 0 else list(reversed(targets))
                    for name in order:
                        spec = JOBS[job]
                        # Same starting point for every target: no writeback
                        # of an earlier run in flight, the same page-cache
                        # state of its backing files (see reset_cache), and a
                        # short unmeasured warm-up of the same job.
                        reset_cache(backing_files(env, name, backing), populate=not direct)
                        warm = min(1.0, args.secs)
                        la = loadavg()
                        if name == "host-fio":
                            host_fio(backing, spec, warm, direct)
                            r = host_fio(backing, spec, args.secs, direct)
                        else:
                            cmd, sock = cmds[name]
                            with Target(cmd, sock, env.work / f"{name}.log") as t:
                                loadgen(env, sock, t.proc.pid, spec, warm)
                                r = loadgen(env, sock, t.proc.pid, spec, args.secs)
                        r["loadavg"] = la
                        samples.append((job, mode, name, rnd, r))
                        log(f"{mode} {job} round {rnd} {name}: {r['iops']:.0f} IOPS p99 {r['p99']:.0f} us "
                            f"cpu/io {r['cpu_per_io'] if r['cpu_per_io'] is not None else float('nan'):.2f} us "
                            f"(load {la})")
    finally:
        if not args.keep:
            shutil.rmtree(env.work, ignore_errors=True)
    report(samples, jobs, modes, targets)
    if args.json:
        Path(args.json).write_text(json.dumps([dict(job=j, mode=m, target=t, round=r, **res)
                                               for j, m, t, r, res in samples], indent=1))


def report(samples, jobs, modes, targets):
    def pick(job, mode, target, key):
        return [s[4][key] for s in samples if s[0] == job and s[1] == mode and s[2] == target
                and s[4][key] is not None]

    print("\n| job | backing | target | IOPS median (min–max) | p99 µs | backend CPU µs/IO | per-queue IOPS |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for mode in modes:
        for job in jobs:
            med = {}
            for t in targets:
                v = pick(job, mode, t, "iops")
                if not v:
                    continue
                med[t] = statistics.median(v)
                p99 = statistics.median(pick(job, mode, t, "p99"))
                cpu = pick(job, mode, t, "cpu_per_io")
                cpu_s = f"{statistics.median(cpu):.2f}" if cpu else "–"
                pq = [s[4]["per_queue"] for s in samples if s[0] == job and s[1] == mode and s[2] == t]
                pq_s = " / ".join(f"{statistics.median(q[i] for q in pq):.0f}" for i in range(len(pq[0]))) \
                    if pq and pq[0] and len(pq[0]) > 1 else ""
                print(f"| {job} | {mode} | {t} | {med[t]:.0f} ({min(v):.0f}–{max(v):.0f}) | {p99:.0f} | {cpu_s} | {pq_s} |")
            ratios.append((job, mode, med))
    print("\nRatios: of the medians; in brackets the median and min–max of the per-round ratios (A and B of")
    print("the same round ran back to back, so a slow drift of the disk or the machine cancels out).")
    pairs = [("tierblk-1", "qsd"), ("tierblk-1", "host-fio"), ("tierblk-3", "tierblk-1")]
    if "tierblk-3-off" in targets:
        pairs.append(("tierblk-3", "tierblk-3-off"))
    names = {"qsd": "QSD", "host-fio": "host fio"}
    print("\n| job | backing | " + " | ".join(f"{a}/{names.get(b, b)}" for a, b in pairs) + " |")
    print("|---|---|" + "---|" * len(pairs))
    for job, mode, med in ratios:
        def ratio(a, b):
            if a not in med or b not in med or med[b] <= 0:
                return "–"
            per_round = paired_ratios(samples, job, mode, a, b)
            out = f"{med[a] / med[b]:.2f}×"
            if len(per_round) > 1:
                out += (f" ({statistics.median(per_round):.2f}×, "
                        f"{min(per_round):.2f}–{max(per_round):.2f})")
            return out
        print(f"| {job} | {mode} | " + " | ".join(ratio(a, b) for a, b in pairs) + " |")

def paired_ratios(samples, job, mode, a, b):
    """IOPS of `a` over `b` for every round both ran in."""
    by_round = {}
    for j, m, t, rnd, r in samples:
        if j == job and m == mode and t in (a, b):
            by_round.setdefault(rnd, {})[t] = r["iops"]
    return [v[a] / v[b] for v in by_round.values() if a in v and b in v and v[b] > 0]

if __name__ == "__main__":
    main()
