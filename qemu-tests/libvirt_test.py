"""The libvirt test: a real libvirtd (started by hand, no systemd) in a
private mount namespace, so its config, sockets and state live in a scratch
directory and the host's libvirt setup is untouched. It defines and starts a
domain with a tierblk vhostuser disk and the guest runs the fio verify
through it. The tierblk qemu hook is installed and must have run.
"""

import os
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

DOMAIN = """<domain type='qemu' xmlns:tierblk='https://tierblk.dev/xmlns/1'>
  <name>tierblk-qt</name>
  <metadata><tierblk:app>qemu-tests</tierblk:app></metadata>
  <memory unit='MiB'>512</memory>
  <vcpu>2</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 tierblk.test=libvirt</cmdline>
  </os>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='vhostuser' device='disk'>
      <driver name='qemu' type='raw' queues='2'/>
      <source type='unix' path='{sock}'>
        <reconnect enabled='yes' timeout='1'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='{serial}'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
"""

LIBVIRTD_CONF = """unix_sock_dir = "{run}"
unix_sock_group = "root"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "1:file:{log}"
"""

QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = []
stdio_handler = "file"
"""


def start_libvirtd(dir: Path):
    etc = dir / "etc-libvirt"
    (etc / "hooks").mkdir(parents=True)
    for sub in ("run", "lib", "log", "cache", "domains"):
        (dir / sub).mkdir()
    (etc / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(run=dir / "run", log=dir / "log" / "libvirtd.log"))
    (etc / "qemu.conf").write_text(QEMU_CONF)
    hook = etc / "hooks" / "qemu"
    hook.write_bytes((REPO / "libvirt" / "hooks" / "qemu").read_bytes())
    hook.chmod(0o755)
    (etc / "hooks" / "tierblk.conf").write_text(f"TIERBLK_DOMAINS={dir / 'domains'}\n")
    # Private mount namespace: libvirt's fixed paths point at scratch dirs.
    script = f"""set -e
mount --bind {etc} /etc/libvirt
mkdir -p /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt
mount --bind {dir / 'run'} /run/libvirt
mount --bind {dir / 'lib'} /var/lib/libvirt
mount --bind {dir / 'log'} /var/log/libvirt
mount --bind {dir / 'cache'} /var/cache/libvirt
exec libvirtd -f /etc/libvirt/libvirtd.conf
"""
    logf = open(dir / "libvirtd.out", "w")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            stdout=logf, stderr=subprocess.STDOUT)
    sock = dir / "run" / "libvirt-sock"
    deadline = time.time() + 30
    while not sock.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("libvirtd did not start: " + (dir / "libvirtd.out").read_text()[-2000:])
        time.sleep(0.1)
    return proc, f"qemu:///system?socket={sock}"


def virsh(uri, *args, check=True):
    r = subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {r.stderr.strip()}")
    return r


def run(suite, dir: Path, Daemon, Guest, boot_and_collect):
    from run import CACHE, parse_results  # noqa: E402 (same folder)

    d = Daemon(dir)
    d.start()
    proc = None
    try:
        proc, uri = start_libvirtd(dir)
        suite.record("libvirt:libvirtd-started", True, virsh(uri, "version").stdout.splitlines()[0])
        serial = dir / "serial-libvirt.log"
        xml = dir / "domain.xml"
        xml.write_text(DOMAIN.format(kernel=CACHE / "vmlinuz", initrd=CACHE / "initrd.gz",
                                     sock=d.sock, serial=serial))
        virsh(uri, "define", str(xml))
        t0 = time.time()
        virsh(uri, "start", "tierblk-qt")
        state = ""
        while time.time() - t0 < 900:
            state = virsh(uri, "domstate", "tierblk-qt", check=False).stdout.strip()
            if state == "shut off":
                break
            time.sleep(1)
        out = serial.read_text(errors="replace") if serial.exists() else ""
        suite.record("libvirt:domain-ran-and-shut-off", state == "shut off" and "@@END libvirt" in out,
                     f"state={state!r} after {time.time() - t0:.0f} s")
        results = parse_results(out)
        for name, ok, detail in results:
            suite.record(f"libvirt:{name}", ok, detail)
        if not results:
            suite.record("libvirt:results", False, "guest reported nothing")
            print("---- guest serial (tail) ----\n" + out[-3000:])
            print("---- libvirtd log (tail) ----\n" + (dir / "log" / "libvirtd.log").read_text(errors="replace")[-3000:]
                  if (dir / "log" / "libvirtd.log").exists() else "")
        saved = dir / "domains" / "tierblk-qt.xml"
        suite.record("libvirt:qemu-hook-saved-domain-xml", saved.exists() and "vhostuser" in saved.read_text())
        virsh(uri, "undefine", "tierblk-qt", check=False)
        # The hook refuses a domain whose tierblk socket is not served.
        bad = dir / "nosock.xml"
        bad.write_text(DOMAIN.format(kernel=CACHE / "vmlinuz", initrd=CACHE / "initrd.gz",
                                     sock=dir / "not-served.sock", serial=dir / "serial-nosock.log")
                       .replace("<name>tierblk-qt</name>", "<name>tierblk-qt-nosock</name>"))
        virsh(uri, "define", str(bad))
        r = virsh(uri, "start", "tierblk-qt-nosock", check=False)
        suite.record("libvirt:hook-refuses-unserved-socket",
                     r.returncode != 0 and "is tierblk serving this volume" in r.stderr, r.stderr.strip()[:300])
        virsh(uri, "undefine", "tierblk-qt-nosock", check=False)
    finally:
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        d.stop()
