#!/bin/sh
# Run by the libvirt domain: write and read-back verify through tierblk.
. /tests/lib.sh
run_fio libvirt-verify --rw=randwrite --bs=64k --size=48m --verify=crc32c \
    --verify_fatal=1 --do_verify=1 --randseed=7
run_fio libvirt-readback --rw=randwrite --bs=64k --size=48m --verify=crc32c \
    --verify_fatal=1 --verify_only=1 --randseed=7
