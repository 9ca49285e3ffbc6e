#!/usr/bin/env bash
# Builds the test guest: Debian's stock kernel (downloaded with apt-get
# download and unpacked, not installed) and a small initramfs with busybox,
# fio and its libraries, the virtio modules and the guest test scripts.
# Output (cached, rebuilt when the inputs change): $OUT/vmlinuz, $OUT/initrd.gz
# Usage: build-guest.sh OUT_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-guest.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)

kpkg=$(apt-cache depends linux-image-amd64 | grep -o 'linux-image-[0-9][^ ]*-amd64' | head -1)
[ -n "$kpkg" ] || { echo "build-guest: cannot find the kernel package behind linux-image-amd64" >&2; exit 1; }
stamp="$kpkg $(sha256sum "$here"/guest/* "$0" | sha256sum | cut -c1-16) $(fio --version)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -f "$out/initrd.gz" ]; then
    echo "build-guest: guest up to date ($kpkg)"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"   # apt-get download runs as _apt and must write here
echo "build-guest: downloading $kpkg"
download() { (cd "$work" && apt-get download -q "$kpkg" 2>&1 | grep -v '^W: Download is performed unsandboxed') || true; }
download
if ! ls "$work"/linux-image-*.deb >/dev/null 2>&1; then
    # Stale package lists can name a kernel the mirror no longer has.
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-amd64 | grep -o 'linux-image-[0-9][^ ]*-amd64' | head -1)
    download
fi
deb=$(ls "$work"/linux-image-*.deb) || { echo "build-guest: could not download $kpkg" >&2; exit 1; }
dpkg-deb -x "$deb" "$work/k"
kver=${kpkg#linux-image-}
moddir="$work/k/lib/modules/$kver"
cp "$work/k/boot/vmlinuz-$kver" "$out/vmlinuz"

root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules,tests}
cp /bin/busybox "$root/bin/busybox"
for app in sh mount umount insmod poweroff reboot sleep cat echo dd md5sum mkdir \
    blkdiscard grep sed tr head tail ls cmp seq sync date true false printf wc xargs; do
    ln -s busybox "$root/bin/$app"
done

# fio and the shared libraries it loads, at the same paths.
cp "$(command -v fio)" "$root/bin/fio"
ldd "$(command -v fio)" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

# The virtio modules, dependencies first (Debian builds them as modules).
declare -a order=()
add_mod() {
    local name=$1 f dep
    for m in "${order[@]:-}"; do [ "$m" = "$name" ] && return 0; done
    f=$(find "$moddir" -name "$name.ko*" | head -1)
    [ -n "$f" ] || { echo "build-guest: module $name not in $kpkg" >&2; exit 1; }
    for dep in $(modinfo -F depends "$f" | tr ',' ' '); do add_mod "$dep"; done
    order+=("$name")
    case "$f" in
        *.ko.xz) xz -dc "$f" > "$root/lib/modules/$name.ko" ;;
        *.ko.zst) zstd -qdc "$f" > "$root/lib/modules/$name.ko" ;;
        *) cp "$f" "$root/lib/modules/$name.ko" ;;
    esac
}
for m in virtio_pci virtio_blk; do add_mod "$m"; done
printf '%s\n' "${order[@]}" > "$root/lib/modules/order"

cp "$here"/guest/init "$root/init"
cp "$here"/guest/*.sh "$root/tests/"
chmod +x "$root/init" "$root"/tests/*.sh
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.gz"
echo "$stamp" > "$out/stamp"
echo "build-guest: built $out (kernel $kver, modules: ${order[*]})"
