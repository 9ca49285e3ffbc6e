#!/usr/bin/env python3
"""Real-guest tests: boots Debian's kernel in QEMU (TCG) with a vhost-user-blk
disk served by tierblk and runs fio inside the guest.

Usage: qemu-tests/run.py [--only NAME[,NAME...]] [--keep]
Prints one line per check and a closing line "qemu-tests: N passed, M failed".
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
MIB = 1 << 20


def log(msg):
    print(f"[qemu-tests] {msg}", flush=True)


def tierblk_binary():
    if os.environ.get("TIERBLK"):
        return Path(os.environ["TIERBLK"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "tierblk"


def ensure_binary():
    """Builds tierblk with cargo unless TIERBLK names a binary: a no-op when it
    is up to date, and it never tests a stale build."""
    if os.environ.get("TIERBLK"):
        if not tierblk_binary().exists():
            sys.exit(f"qemu-tests: TIERBLK={tierblk_binary()} does not exist")
        return
    log("cargo build --bin tierblk")
    if subprocess.run(["cargo", "build", "--bin", "tierblk"], cwd=REPO).returncode != 0:
        sys.exit("qemu-tests: `cargo build --bin tierblk` failed")
    if not tierblk_binary().exists():
        sys.exit(f"qemu-tests: cargo built, but {tierblk_binary()} is missing (CARGO_TARGET_DIR?)")


def tiers_config(dir: Path, tiers):
    out = []
    for i, (cap, emulate) in enumerate(tiers):
        d = dir / f"tier{i}"
        out.append(
            f"""[[tier]]
tier_id = {i}
name = "tier{i}"
capacity = "{cap}"
cost_per_gb = {[0.25, 0.10, 0.03][i % 3]}
path = "{d}"
performance_metrics = {{ read_latency_us = {[90, 250, 8000][i % 3]}, write_latency_us = {[30, 80, 8000][i % 3]}, bandwidth_mibps = {[3000, 500, 160][i % 3]} }}
{"emulate = " + emulate if emulate else ""}
"""
        )
    return "\n".join(out)


class Daemon:
    """tierblk serving one volume, over three tiers carved from one disk."""

    # New chunks of an unknown VM start cold on the slowest tier; it is
    # small, so a disk-wide write spills over onto the faster tiers too.
    TIERS = [("64MiB", ""), ("64MiB", "{ read_latency_us = 200 }"), ("48MiB", "{ read_latency_us = 500, write_latency_us = 500 }")]

    def __init__(self, dir: Path, disk_mib=128, chunk="1MiB", queues=2):
        self.dir = dir
        self.sock = dir / "vol.sock"
        self.log_path = dir / "tierblk.log"
        self.config = dir / "tierblk.toml"
        self.config.write_text(
            f"""[daemon]
state_dir = "{dir / 'state'}"
epoch_secs = 2

{tiers_config(dir, self.TIERS)}

[[volume]]
name = "guest-disk"
size = "{disk_mib}MiB"
chunk_size = "{chunk}"
socket = "{self.sock}"
num_queues = {queues}
serial = "tierblk-guest"
"""
        )
        self.proc = None

    def start(self):
        if self.sock.exists():
            self.sock.unlink()
        logf = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [str(tierblk_binary()), "serve", "--create-dirs", "--config", str(self.config)],
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 20
        while not self.sock.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"tierblk exited early:\n{self.log()}")
            if time.time() > deadline:
                raise RuntimeError(f"tierblk socket never appeared:\n{self.log()}")
            time.sleep(0.05)

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log(self, full=False):
        try:
            text = self.log_path.read_text()
        except OSError:
            return ""
        return text if full else text[-4000:]

    def tier_files(self):
        return [self.dir / f"tier{i}" / "extents.dat" for i in range(len(self.TIERS))]


_KVM = None


def kvm_usable():
    """KVM only where a probe boot of the test kernel succeeds (on machines
    whose /dev/kvm is nested and cannot run a stock kernel, QEMU aborts)."""
    global _KVM
    if os.environ.get("TIERBLK_QEMU_ACCEL"):
        return os.environ["TIERBLK_QEMU_ACCEL"] == "kvm"
    if _KVM is None:
        _KVM = False
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            log_path = CACHE / "kvm-probe.log"
            try:
                subprocess.run(
                    ["qemu-system-x86_64", "-machine", "q35", "-accel", "kvm", "-cpu", "host",
                     "-m", "256M", "-kernel", str(CACHE / "vmlinuz"), "-initrd", str(CACHE / "initrd.gz"),
                     "-append", "console=ttyS0 quiet panic=-1 tierblk.test=probe", "-display", "none",
                     "-serial", f"file:{log_path}", "-no-reboot", "-nodefaults"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
                _KVM = "@@PROBE ok" in log_path.read_text(errors="replace")
            except (subprocess.TimeoutExpired, OSError):
                _KVM = False
        log(f"accelerator: {'kvm' if _KVM else 'tcg'} (KVM probe boot {'succeeded' if _KVM else 'failed'})")
    return _KVM


class Guest:
    def __init__(self, dir: Path, sock: Path, test: str, queues=2, mem="512M"):
        self.serial = dir / f"serial-{test}.log"
        accel = "kvm" if kvm_usable() else "tcg"
        self.cmd = [
            "qemu-system-x86_64",
            "-machine", "q35",
            "-accel", accel,
            "-cpu", "max" if accel == "tcg" else "host",
            "-smp", "2",
            "-m", mem,
            "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
            "-numa", "node,memdev=mem",
            "-kernel", str(CACHE / "vmlinuz"),
            "-initrd", str(CACHE / "initrd.gz"),
            "-append", f"console=ttyS0 quiet panic=-1 tierblk.test={test}",
            "-chardev", f"socket,id=disk0,path={sock},reconnect=1",
            "-device", f"vhost-user-blk-pci,chardev=disk0,num-queues={queues}",
            "-display", "none",
            "-serial", f"file:{self.serial}",
            "-no-reboot",
            "-nodefaults",
        ]
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def output(self):
        try:
            return self.serial.read_text(errors="replace")
        except OSError:
            return ""

    def wait(self, timeout):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return False
        return True

    def wait_for(self, marker, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if marker in self.output():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.2)
        return False


def parse_results(out):
    """(name, ok, detail) for each fio job and check the guest reported."""
    res = []
    for m in re.finditer(r"@@FIO-BEGIN (\S+)\n(.*?)@@FIO-END \1\n(.*?)@@FIO \1 rc=(\d+)", out, re.S):
        name, body, stderr, rc = m.group(1), m.group(2), m.group(3), int(m.group(4))
        detail = ""
        try:
            j = json.loads(body[body.index("{"):])
            job = j["jobs"][0]
            errs = job.get("error", 0)
            r, w = job["read"], job["write"]
            detail = (f"read {r['io_bytes'] // MIB} MiB {r['iops']:.0f} IOPS, "
                      f"write {w['io_bytes'] // MIB} MiB {w['iops']:.0f} IOPS, error={errs}")
            ok = rc == 0 and errs == 0
        except (ValueError, KeyError, IndexError) as e:
            ok = False
            detail = f"unparsable fio output ({e})"
        if not ok:
            detail += " " + " ".join(l for l in stderr.splitlines() if l.strip())[:600]
        res.append((f"fio:{name}", ok, detail))
    for m in re.finditer(r"@@CHECK (\S+) (ok|FAILED)", out):
        res.append((f"check:{m.group(1)}", m.group(2) == "ok", ""))
    for m in re.finditer(r"@@ERROR (.*)", out):
        res.append(("guest-error", False, m.group(1)))
    return res


class Suite:
    def __init__(self, keep):
        self.passed = 0
        self.failed = 0
        self.keep = keep

    def record(self, name, ok, detail=""):
        detail = " ".join(str(detail).split())
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        log(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")

    def diagnose(self, guest, daemon):
        out = guest.output()
        print("---- guest serial (tail) ----\n" + out[-3000:], flush=True)
        print("---- tierblk log (tail) ----\n" + daemon.log()[-3000:], flush=True)


def boot_and_collect(suite, test, dir, daemon, timeout, expect=None, during=None):
    """Boots the guest on `test`, optionally runs `during(guest)` while it
    runs, records each result; returns the parsed results."""
    g = Guest(dir, daemon.sock, test)
    t0 = time.time()
    g.start()
    if during:
        during(g)
    finished = g.wait(timeout)
    out = g.output()
    results = parse_results(out)
    ended = f"@@END {test}" in out
    log(f"{test}: guest ran {time.time() - t0:.0f} s")
    if not finished or not ended:
        suite.record(f"{test}:guest-finished", False, "timed out" if not finished else "no @@END marker")
        suite.diagnose(g, daemon)
        return results
    if expect is not None:
        expect(results)
    else:
        for name, ok, detail in results:
            suite.record(f"{test}:{name}", ok, detail)
        if not results:
            suite.record(f"{test}:results", False, "guest reported nothing")
    if any(not ok for _, ok, _ in results) and expect is None:
        suite.diagnose(g, daemon)
    return results


def test_suite(suite, dir):
    d = Daemon(dir)
    d.start()
    try:
        res = boot_and_collect(suite, "suite", dir, d, timeout=900)
        out = (dir / "serial-suite.log").read_text(errors="replace")
        suite.record("suite:serial-is-volume-serial", "serial=tierblk-guest" in out)
        # The whole-disk verify spread the data over every tier.
        used = [f.stat().st_blocks > 0 and has_data(f) for f in d.tier_files()]
        suite.record("suite:data-on-every-tier", all(used), f"tiers with data: {used}")
    finally:
        d.stop()
    return res


def has_data(path):
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return False
            if b.count(0) != len(b):
                return True


def test_restart(suite, dir):
    """SIGKILL tierblk while the guest writes; restart it; QEMU reconnects,
    the guest's I/O resumes, and data flushed before the kill verifies."""
    d = Daemon(dir)
    d.start()

    def during(g):
        if not g.wait_for("@@PHASE1-DONE", 600):
            return
        time.sleep(3)
        log("restart: killing tierblk (SIGKILL) during guest writes")
        d.kill9()
        time.sleep(1)
        d.start()
        log("restart: tierblk restarted")

    try:
        boot_and_collect(suite, "restart", dir, d, timeout=900, during=during)
        suite.record("restart:daemon-was-killed-and-restarted", "client connected" in d.log())
    finally:
        d.stop()


class InflightDaemon(Daemon):
    """Every tier delays writes by 100 ms, so reads of never-written blocks
    (no device I/O) overtake the writes queued before them."""
    TIERS = [(cap, "{ write_latency_us = 100000 }") for cap, _ in Daemon.TIERS]


def test_inflight(suite, dir):
    """kill -9 with requests completed out of order and others in flight:
    QEMU hands the inflight region (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD)
    to each new tierblk, which serves the pending requests again and only
    those. fio in the guest verifies every block and must see no error and
    no hang."""
    d = InflightDaemon(dir)
    d.start()
    kills = int(os.environ.get("TIERBLK_INFLIGHT_KILLS", "3"))

    def during(g):
        if not g.wait_for("@@PHASE1-DONE", 600):
            return
        for i in range(kills):
            time.sleep(5)
            d.kill9()
            log(f"inflight: kill {i + 1}")
            time.sleep(0.3)
            d.start()

    try:
        results = boot_and_collect(suite, "inflight", dir, d, timeout=900, during=during)
        served = sum(int(n) for n in re.findall(r"serving again (\d+) requests", d.log(full=True)))
        log(f"inflight: {kills} kills with requests in flight, {served} requests served again after restarts")
        suite.record("inflight:requests-were-served-again", served > 0, f"{served} requests over {kills} kills")
        suite.record("inflight:guest-io-completed", bool(results), "fio finished" if results else "no fio result")
    finally:
        d.stop()


def corrupt_extents(files):
    """Overwrites, behind the daemon's back, the first 4 KiB block holding
    data in every MiB of the tier files. Extents of 1 MiB chunks are 1 MiB
    aligned, so every chunk the guest wrote is hit wherever the brain has
    moved it (a few picked blocks could all lie in extents freed by a
    migration, and the verify would then rightly pass). Returns how many
    blocks were overwritten."""
    n = 0
    for f in files:
        with open(f, "r+b") as fh:
            off = 0
            while True:
                b = fh.read(1 << 20)
                if not b:
                    break
                i = next((k for k in range(0, len(b), 4096) if b[k:k + 4096].count(0) != 4096), None)
                if i is not None:
                    fh.seek(off + i)
                    fh.write(os.urandom(4096))
                    fh.flush()
                    os.fsync(fh.fileno())
                    n += 1
                off += len(b)
                fh.seek(off)
    return n


def test_corruption_detected(suite, dir):
    """The verify can fail: data changed behind tierblk's back is reported."""
    d = Daemon(dir)
    d.start()
    try:
        boot_and_collect(suite, "write-pattern", dir, d, timeout=600)
        n = corrupt_extents(d.tier_files())
        suite.record("corrupt:overwrote-extent-blocks", n > 0, f"{n} blocks")

        def expect(results):
            fio = [r for r in results if r[0] == "fio:verify-pattern"]
            failed = bool(fio) and not fio[0][1]
            suite.record("corrupt:guest-verify-reports-mismatch", failed,
                         "fio verify failed as it must" if failed else f"verify passed on corrupted data: {fio}")

        boot_and_collect(suite, "verify-pattern", dir, d, timeout=600, expect=expect)
    finally:
        d.stop()


TESTS = {
    "suite": test_suite,
    "restart": test_restart,
    "inflight": test_inflight,
    "corrupt": test_corruption_detected,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated tests: " + ",".join(TESTS) + ",libvirt")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(TESTS) + ["libvirt"]
    ensure_binary()
    subprocess.run([str(HERE / "build-guest.sh"), str(CACHE)], check=True)
    suite = Suite(args.keep)
    t0 = time.time()
    for name in names:
        dir = Path(tempfile.mkdtemp(prefix=f"tierblk-qt-{name}-"))
        log(f"=== {name} ({dir})")
        try:
            if name == "libvirt":
                sys.path.insert(0, str(HERE))
                import libvirt_test
                libvirt_test.run(suite, dir, Daemon, Guest, boot_and_collect)
            else:
                TESTS[name](suite, dir)
        except Exception as e:  # a harness failure is a test failure
            suite.record(f"{name}:harness", False, repr(e))
        finally:
            if not args.keep:
                shutil.rmtree(dir, ignore_errors=True)
    log(f"total {time.time() - t0:.0f} s")
    print(f"qemu-tests: {suite.passed} passed, {suite.failed} failed", flush=True)
    sys.exit(1 if suite.failed else 0)


if __name__ == "__main__":
    main()
