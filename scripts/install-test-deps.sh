#!/usr/bin/env bash
# Installs what the test suite needs on Debian 12 (root). Idempotent.
#   - QEMU, fio, busybox, cpio, kmod: the real-guest tests (qemu-tests/) and
#     the benchmark peers (qemu-storage-daemon, fio); qemu-utils keeps qemu-img
#     (installing Debian 12's QEMU replaces a backported qemu-utils)
#   - libvirt daemon, QEMU driver and virsh: the libvirt domain test
#   - e2fsprogs: the chaos test of a tier on ext2 (no fallocate)
#   - cargo-afl and AFL++: the coverage-guided fuzz targets (fuzz/)
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils fio busybox-static cpio kmod xz-utils e2fsprogs
      libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)
need=()
for pkg in "${pkgs[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# libvirt's QEMU driver looks its default user up before reading qemu.conf;
# Debian's libvirt-daemon-system would create it, the minimal install does not.
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 ||
    useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
# cargo-afl (pinned) and the AFL++ it builds: the fuzz targets in fuzz/
# (scripts/fuzz.sh). `cargo afl config --build` refuses to rebuild an
# AFL++ already built for this rustc; that is the idempotent case.
cargo_afl_version=0.18.2
if [[ "$(cargo afl --version 2>/dev/null)" != "cargo-afl $cargo_afl_version "* ]]; then
    cargo install cargo-afl --version "$cargo_afl_version" --locked
fi
if ! out=$(cargo afl config --build 2>&1); then
    grep -q "already built" <<<"$out" || { printf '%s\n' "$out" >&2; exit 1; }
fi
