#!/bin/sh
# Phase 1 writes and flushes a pattern; phase 2 keeps writing elsewhere while
# the host kills and restarts tierblk; phase 3 verifies the phase-1 data.
. /tests/lib.sh
run_fio phase1-write --rw=write --bs=64k --size=16m --verify=crc32c \
    --do_verify=0 --end_fsync=1
echo "@@PHASE1-DONE"
run_fio phase2-write-through-restart --rw=randwrite --bs=16k --offset=32m \
    --size=32m --time_based=1 --runtime=25 --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --randseed=5
run_fio phase3-verify-flushed --rw=write --bs=64k --size=16m --verify=crc32c \
    --verify_only=1 --verify_fatal=1
