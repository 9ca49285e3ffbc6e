#!/bin/sh
# The main guest suite: data integrity across the whole disk (many chunks on
# several tiers), mixed and sequential I/O, discard, and flush-heavy writes.
. /tests/lib.sh
size=$(cat /sys/block/vda/size)
echo "@@INFO disk sectors=$size serial=$(cat /sys/block/vda/serial 2>/dev/null)"

# Random writes over the whole disk with crc32c checksums, verified after
# writing; then a separate read-back pass verifying every block.
run_fio randwrite-verify --rw=randwrite --bs=64k --size=100% --verify=crc32c \
    --verify_fatal=1 --do_verify=1 --randseed=1
run_fio readback-verify --rw=randwrite --bs=64k --size=100% --verify=crc32c \
    --verify_fatal=1 --verify_only=1 --randseed=1

# Mixed random read/write with verification of what was written.
run_fio mixed --rw=randrw --rwmixread=60 --bs=4k --offset=16m --size=8m \
    --verify=crc32c --verify_fatal=1 --do_verify=1 --randseed=2 --iodepth=1

# Sequential write then read-back of 24 MiB in 1 MiB requests (spans chunks).
run_fio seq --rw=write --bs=1m --offset=32m --size=24m --verify=md5 \
    --verify_fatal=1 --do_verify=1

# Flush-heavy: every write followed by fsync (virtio FLUSH).
run_fio fsync --rw=randwrite --bs=4k --offset=64m --size=2m --fsync=1 \
    --verify=crc32c --verify_fatal=1 --do_verify=1 --randseed=3

# Discard: one whole 1 MiB chunk plus a partial one, then reads return zeros
# there while the neighbouring data is intact.
dd if=/dev/urandom of=/tmp/pat bs=1M count=3 2>/dev/null
dd if=/tmp/pat of=$DEV bs=1M seek=100 count=3 conv=fsync 2>/dev/null
blkdiscard -o $((100 * 1048576 + 524288)) -l $((1048576 + 524288)) $DEV
check discard-rc $?
dd if=/dev/zero of=/tmp/zero bs=512k count=3 2>/dev/null
dd if=$DEV of=/tmp/got bs=512k skip=201 count=3 iflag=direct 2>/dev/null
cmp /tmp/got /tmp/zero
check discard-reads-zeros $?
dd if=$DEV of=/tmp/head bs=512k skip=200 count=1 iflag=direct 2>/dev/null
dd if=/tmp/pat of=/tmp/headwant bs=512k count=1 2>/dev/null
cmp /tmp/head /tmp/headwant
check discard-keeps-neighbours $?
dd if=$DEV of=/tmp/tail bs=512k skip=204 count=2 iflag=direct 2>/dev/null
dd if=/tmp/pat of=/tmp/tailwant bs=512k skip=4 count=2 2>/dev/null
cmp /tmp/tail /tmp/tailwant
check discard-keeps-tail $?
