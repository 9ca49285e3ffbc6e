#!/usr/bin/env bash
# Installs what the test suite needs on Debian 12 (root). Idempotent.
#   - QEMU, fio, busybox, cpio, kmod: the real-guest tests (qemu-tests/) and
#     the benchmark peers (qemu-storage-daemon, fio); qemu-utils keeps qemu-img
#     (installing Debian 12's QEMU replaces a backported qemu-utils)
#   - libvirt daemon, QEMU driver and virsh: the libvirt domain test
#   - e2fsprogs: the chaos test of a tier on ext2 (no fallocate)
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
